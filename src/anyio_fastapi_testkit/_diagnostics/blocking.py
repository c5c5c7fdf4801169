"""Blocked loop: code that held the event loop longer than a threshold during a test.

The kit's watchdog thread posts a callback to the loop and measures how long the loop takes to
run it; when that passes the threshold, it samples the loop thread's stack (the code holding
it: ``time.sleep``, sync I/O, a long computation). Works the same on asyncio and trio.
"""

from __future__ import annotations

import inspect
import sys
import threading
from dataclasses import dataclass
from types import FrameType

from .._core.clock import Post, Watcher, loop_poster, now, wake
from .frames import Stack, format_stack, innermost_user_frame, location, user_part

# Pings per threshold: a block is seen once it lasts about 1.25 thresholds.
_PINGS_PER_THRESHOLD = 4
# Seconds without a watched test after which the watchdog thread stops pinging until the next
# one: between tests it goes on at the same pace, so that a test's start wakes nothing.
_IDLE_BEFORE_SLEEP = 1.0
_NEVER = float("inf")


@dataclass(frozen=True)
class Block:
    seconds: float
    stack: Stack


def _task_stack(frame: FrameType | None) -> Stack:
    """The loop thread's stack from the running task's outermost coroutine inwards."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    start = next((i for i, f in enumerate(frames) if f.f_code.co_flags & inspect.CO_COROUTINE), 0)
    return [(f.f_code, f.f_lineno) for f in frames[start:]]


class WatchedTest:
    """One test's share of the watch: its pings and the blocks they found.

    Written by the loop thread and the watchdog thread without a lock: each field has one
    writer at a time, and a ping of a test that has ended is dropped.
    """

    __slots__ = ("blocks", "ended", "interval", "post", "sample", "sent", "thread", "threshold")

    def __init__(self, threshold: float, post: Post) -> None:
        self.threshold = threshold
        self.interval = threshold / _PINGS_PER_THRESHOLD
        self.post = post
        self.thread = threading.get_ident()
        self.blocks: list[Block] = []
        self.sent: float | None = None
        self.sample: Stack | None = None
        self.ended = False

    def answer(self) -> None:
        # On the loop, once it got round to the ping.
        sent, sample = self.sent, self.sample
        if sent is None or self.ended:
            return
        waited = now() - sent
        if waited >= self.threshold and sample is not None:
            self.blocks.append(Block(waited, sample))
        self.sent = None


class LoopMonitor(Watcher):
    """Watches the loop of the test that is running, from the watchdog thread.

    One for the process, registered once: a test starts and stops being watched by setting
    ``current``, without the thread's lock or a wake-up; the thread pings only while a test
    is watched.
    """

    def __init__(self) -> None:
        self.current: WatchedTest | None = None
        # Written under the watchdog's lock: not registered yet, or stopped pinging when idle.
        self._asleep = True
        self._interval = _NEVER
        self._idle_since: float | None = None

    def start(self, threshold: float) -> WatchedTest:
        test = WatchedTest(threshold, loop_poster())
        self.current = test
        # Read after `current` is set: see check() for why no wake-up can be missed.
        if self._asleep or test.interval < self._interval:
            wake(self)
        return test

    def woken(self) -> None:
        self._asleep = False
        self._idle_since = None
        # Also the pace between tests, which then wake nothing.
        test = self.current
        if test is not None:
            self._interval = test.interval

    def stop(self, test: WatchedTest) -> list[Block]:
        if self.current is test:
            self.current = None
        # A test that blocks until its very end returns before the loop runs the ping.
        test.answer()
        test.ended = True
        return test.blocks

    def check(self, at: float) -> float:
        # In the watchdog thread, under its lock.
        test = self.current
        if test is None:
            if self._idle_since is None:
                self._idle_since = at
            if at - self._idle_since < _IDLE_BEFORE_SLEEP:
                return at + self._interval
            # Announced before `current` is read again: a test that starts after this read
            # sees _asleep and wakes the thread (start() sets `current` before it reads it).
            self._asleep = True
            test = self.current
            if test is None:
                return _NEVER
            self._asleep = False
        self._idle_since = None
        self._interval = test.interval
        sent = test.sent
        if sent is None:
            test.sent, test.sample = at, None
            test.post(test.answer)
        elif at - sent >= test.threshold and test.sample is None:
            test.sample = _task_stack(sys._current_frames().get(test.thread))
        return at + test.interval


MONITOR = LoopMonitor()


def block_report(nodeid: str, block: Block, threshold: float) -> tuple[str, str, int]:
    """The warning text for a block, and the file and line of the user's code to show."""
    # Without code of the test or the app on the stack, the innermost library frame says most.
    place = innermost_user_frame(block.stack) or (block.stack[-1] if block.stack else None)
    text = (
        f"{nodeid}: the event loop was blocked for at least {block.seconds:.2f} s "
        f"(testkit_blocked_loop = {threshold:g}) at {location(place)}; no other task, request "
        "or timeout could run meanwhile. The code holding the loop:\n"
        f"{format_stack(user_part(block.stack, keep_inner=True))}\n"
        "Fix one of: run blocking work in a thread (`await anyio.to_thread.run_sync(func, "
        "*args)`); use an async driver or client instead of a sync one; `await "
        "anyio.sleep(...)` instead of `time.sleep(...)`; or raise testkit_blocked_loop "
        "(`off` disables the check)."
    )
    filename, lineno = (place[0].co_filename, place[1]) if place else ("<unknown>", 0)
    return text, filename, lineno
