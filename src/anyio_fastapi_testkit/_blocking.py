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

from ._frames import Stack, format_stack, innermost_user_frame, location, user_part
from ._watchdog import Watcher, loop_poster, now, unwatch, watch

# Pings per threshold: a block is seen once it lasts about 1.25 thresholds.
_PINGS_PER_THRESHOLD = 4


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


class LoopMonitor(Watcher):
    """Watches the running loop from the watchdog thread until ``stop()``."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.blocks: list[Block] = []
        self._post = loop_poster()
        self._loop_thread = threading.get_ident()
        self._interval = threshold / _PINGS_PER_THRESHOLD
        self._sent: float | None = None
        self._sample: Stack | None = None
        self._stopped = False
        watch(self)

    def check(self, at: float) -> float:
        # In the watchdog thread, under its lock.
        sent = self._sent
        if sent is None:
            self._sent, self._sample = at, None
            self._post(self._answer)
        elif at - sent >= self.threshold and self._sample is None:
            self._sample = _task_stack(sys._current_frames().get(self._loop_thread))
        return at + self._interval

    def _answer(self) -> None:
        # On the loop, once it got round to the ping.
        sent, sample = self._sent, self._sample
        if sent is None or self._stopped:
            return
        waited = now() - sent
        if waited >= self.threshold and sample is not None:
            self.blocks.append(Block(waited, sample))
        self._sent = None

    def stop(self) -> list[Block]:
        unwatch(self)
        # A test that blocks until its very end returns before the loop runs the ping.
        self._answer()
        self._stopped = True
        return self.blocks


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
