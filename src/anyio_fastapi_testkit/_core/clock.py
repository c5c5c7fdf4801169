"""The kit's clock and watchdog thread: deadlines and loop pings that frozen time cannot stop.

The event loops' own clocks are not safe for the kit's limits: freezegun (default options)
replaces ``time.monotonic`` and ``time.perf_counter``, which asyncio's and trio's clocks read
(time-machine before 3.0 freezes ``time.monotonic`` with ``tick=False``), so a loop deadline
either never arrives or, when the frozen date lies in the future of the machine's uptime,
arrives at once. The kit therefore measures time in one daemon thread of its own, started
once per process, and acts on a loop only by posting a callback to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import sys
import threading
import time
from collections.abc import Callable

from .backends import in_trio_run


class _RealClock:
    # freezegun replaces the real time functions wherever they are module attributes (also
    # `from time import monotonic`); it does not look inside classes. time-machine before 3.0
    # patches time.monotonic in C, so that no reference to it escapes, but not perf_counter.
    perf_counter = staticmethod(time.perf_counter)


def now() -> float:
    """Seconds of a monotonic clock of the machine, whatever freezegun or time-machine do."""
    return _RealClock.perf_counter()


Post = Callable[[Callable[[], object]], None]


# The last loop (asyncio loop or trio token) asked about and its poster: every test of a
# session runs on the same one.
_last_poster: tuple[object, Post] | None = None


def loop_poster() -> Post:
    """A thread-safe ``post(callback)`` onto the running event loop (asyncio or trio)."""
    global _last_poster
    last = _last_poster  # read once: other threads (a live server's loop) may replace it
    trio = sys.modules.get("trio")
    if trio is not None and in_trio_run(trio):
        token = trio.lowlevel.current_trio_token()
        if last is not None and last[0] is token:
            return last[1]

        def post_to_trio(callback: Callable[[], object]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(callback)

        _last_poster = token, post_to_trio
        return post_to_trio
    loop = asyncio.get_running_loop()
    if last is not None and last[0] is loop:
        return last[1]

    def post_to_asyncio(callback: Callable[[], object]) -> None:
        # A loop closed meanwhile (RuntimeError) has nothing left to act on.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback)

    _last_poster = loop, post_to_asyncio
    return post_to_asyncio


class Timer:
    """A deadline of the watchdog thread; ``cancel()`` makes it a no-op."""

    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], object]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Watcher:
    """Something the watchdog thread checks periodically: ``check(now)`` returns when next."""

    def check(self, at: float) -> float:
        raise NotImplementedError

    def woken(self) -> None:
        """Called under the thread's lock by ``wake(watcher)``, before the thread checks it."""


class _Watchdog:
    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._watchers: list[Watcher] = []
        self._thread: threading.Thread | None = None
        self._wakes_at = float("inf")

    def _start(self) -> None:
        # Under the condition's lock. A thread per process, never one per test.
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="anyio-fastapi-testkit watchdog", daemon=True
            )
            self._thread.start()

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Timer:
        """Run ``callback`` in the watchdog thread after ``seconds`` of real time."""
        timer = Timer(now() + seconds, callback)
        with self._condition:
            self._start()
            heapq.heappush(self._timers, (timer.deadline, next(self._order), timer))
            if timer.deadline < self._wakes_at:
                self._condition.notify()
        return timer

    def wake(self, watcher: Watcher) -> None:
        with self._condition:
            if watcher not in self._watchers:
                self._watchers.append(watcher)
            watcher.woken()
            self._start()
            self._condition.notify()

    def _run(self) -> None:
        while True:
            due: list[Timer] = []
            with self._condition:
                at = now()
                while self._timers and self._timers[0][0] <= at:
                    timer = heapq.heappop(self._timers)[2]
                    if not timer.cancelled:
                        due.append(timer)
                while self._timers and self._timers[0][2].cancelled:
                    heapq.heappop(self._timers)
                wakes_at = self._timers[0][0] if self._timers else float("inf")
                for watcher in self._watchers:
                    wakes_at = min(wakes_at, watcher.check(at))
                if not due:
                    self._wakes_at = wakes_at
                    # A thread wait is timed by the C lock, out of reach of frozen time.
                    self._condition.wait(None if wakes_at == float("inf") else wakes_at - at)
                    self._wakes_at = float("-inf")
                    continue
            for timer in due:
                # A dying watchdog would hang every later test: its callbacks must not kill it.
                with contextlib.suppress(Exception):
                    timer.callback()


_WATCHDOG = _Watchdog()


def call_later(seconds: float, callback: Callable[[], object]) -> Timer:
    """Run ``callback`` in the kit's watchdog thread after ``seconds`` of real time."""
    return _WATCHDOG.call_later(seconds, callback)


def wake(watcher: Watcher) -> None:
    """Watch ``watcher`` (if not yet) and have the thread check it at once."""
    _WATCHDOG.wake(watcher)
