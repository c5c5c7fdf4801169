"""Ctrl-C and SIGTERM are ordinary stops: the test is cancelled, the run cleans up.

A KeyboardInterrupt raised in the middle of an async test escapes the event loop from
whatever frame was running, and anyio's pytest runner does not survive that: the
interruption is raised again by the next fixture teardown on the loop, so the run ended in a
crash traceback (or in an error blaming the app's lifespan) instead of pytest's interrupted
summary, and the app's shutdown never ran. As ``asyncio.run`` does for its main task, the
kit handles SIGINT itself while an async test runs: it cancels the test, notes where the
test's tasks were waiting, lets the kit's own teardown run on the loop, and only then raises
KeyboardInterrupt for pytest, outside the loop. A second Ctrl-C interrupts at once.

CI cancels a job with SIGTERM, whose default action ends the process with no cleanup at all
(no atexit handler, no server stop): the kit turns it into the same ordinary stop.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType, TracebackType
from typing import Any

import anyio

from .._core.clock import loop_poster
from .timeouts import task_report

_HANDLED: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)


class TestInterrupted(Exception):
    """An async test was cancelled by Ctrl-C or SIGTERM; raised again as KeyboardInterrupt."""

    __test__ = False

    def __init__(
        self, signal_name: str, nodeid: str, report: str, waiting: TracebackType | None
    ) -> None:
        super().__init__(
            f"{nodeid} was interrupted ({signal_name}). Where each task was waiting:\n\n{report}"
        )
        self.signal_name = signal_name
        self.waiting = waiting  # the test's frames down to where it was waiting

    def as_keyboard_interrupt(self, test_file: str) -> KeyboardInterrupt:
        """For pytest, whose summary names the last frame: cut after the test file's last."""
        entries: list[TracebackType] = []
        tb = self.waiting
        while tb is not None:
            entries.append(tb)
            tb = tb.tb_next
        in_test = [i for i, e in enumerate(entries) if e.tb_frame.f_code.co_filename == test_file]
        kept = entries[: in_test[-1] + 1] if in_test else entries
        chain: TracebackType | None = None
        for entry in reversed(kept):
            chain = TracebackType(chain, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
        return KeyboardInterrupt(self.signal_name).with_traceback(chain)


def _ours_to_handle(signum: int, current: Any) -> bool:
    """Whether the kit may take ``signum``, whose handler is ``current``: nobody else
    handles it."""
    if signum == signal.SIGINT:
        return current is signal.default_int_handler
    return current in (signal.SIG_DFL, None) or current is _terminate


# Signals that asked the run to stop: a KeyboardInterrupt raised where Python discards it
# (a weakref callback, a __del__) must still end the run as interrupted.
_asked_to_stop: list[str] = []


def _terminate(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    _asked_to_stop.append(name)
    raise KeyboardInterrupt(f"{name}: the run was asked to stop")


def asked_to_stop() -> str | None:
    """The signal that asked the run to stop (SIGTERM, or one deferred by ``cleaning_up``)."""
    return _asked_to_stop[0] if _asked_to_stop else None


@contextlib.contextmanager
def cleaning_up() -> Iterator[None]:
    """While the kit cleans up at the end of the run, SIGINT and SIGTERM are noted instead of
    interrupting it half-way (a server left running, a database left behind); a second
    signal interrupts at once. ``asked_to_stop()`` then names the first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _HANDLED}

    def note(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if _asked_to_stop and _asked_to_stop[-1] == f"deferred {name}":
            for number, handler in previous.items():
                signal.signal(number, handler)
            raise KeyboardInterrupt(f"{name}, twice: the kit's cleanup was interrupted")
        _asked_to_stop.append(f"deferred {name}")

    for signum in _HANDLED:
        signal.signal(signum, note)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_on_sigterm() -> None:
    """Until ``restore_sigterm()``, SIGTERM raises KeyboardInterrupt as Ctrl-C does (main
    thread only, and only where nobody else handles SIGTERM)."""
    if threading.current_thread() is threading.main_thread() and _ours_to_handle(
        signal.SIGTERM, signal.getsignal(signal.SIGTERM)
    ):
        signal.signal(signal.SIGTERM, _terminate)


def restore_sigterm() -> None:
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is _terminate
    ):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _install(handler: Callable[[int, FrameType | None], None]) -> dict[int, Any]:
    """Make ``handler`` the handler of each of SIGINT and SIGTERM that nobody else handles
    (main thread only); return the handlers it replaced, for ``_restore``."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in _HANDLED:
            current = signal.getsignal(signum)
            if _ours_to_handle(signum, current):
                previous[signum] = current
                signal.signal(signum, handler)
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


async def run_interruptible(
    test: Callable[..., Awaitable[Any]], nodeid: str, test_file: str, /, **kwargs: Any
) -> Any:
    """Run ``test``; on SIGINT or SIGTERM cancel it, then raise ``TestInterrupted``."""
    __tracebackhide__ = True
    post = loop_poster()
    scope = anyio.CancelScope()
    caught: list[tuple[str, str]] = []

    def cancel_on_loop(name: str) -> None:
        if not caught:
            caught.append((name, task_report(test_file)))
            scope.cancel()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        # A second signal while the test winds down interrupts at once, as Python would.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        post(lambda: cancel_on_loop(name))

    result = None
    waiting: TracebackType | None = None
    # Installed per test, not once per run: between tests (pytest's own code, sync fixtures
    # and tests, an asyncio.run() or trio.run() of theirs, which take SIGINT only where its
    # handler is Python's default) the signals keep the handlers they had before the kit.
    previous = _install(on_signal)
    try:
        with scope:
            try:
                result = await test(**kwargs)
            except anyio.get_cancelled_exc_class() as exc:
                waiting = exc.__traceback__
                raise
    finally:
        _restore(previous)
    if caught:
        name, report = caught[0]
        raise TestInterrupted(name, nodeid, report, waiting)
    return result


# The handlers that defer_until_configured replaced (empty: nothing deferred).
_held_until_configured: dict[int, Any] = {}


def defer_until_configured() -> None:
    """From the end of the kit's step before the conftest files are imported until pytest
    configures the run (``deliver_deferred``), SIGINT and SIGTERM are noted, not raised:
    between the two pytest has no session that would end as interrupted, and a
    KeyboardInterrupt there escapes pytest with no summary (the kit's cleanup then runs only
    at exit). A second signal interrupts at once. Main thread only."""
    if threading.current_thread() is not threading.main_thread() or _held_until_configured:
        return

    def note(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if f"deferred {name}" in _asked_to_stop:
            _release()
            raise KeyboardInterrupt(f"{name}: the run was asked to stop")
        _asked_to_stop.append(f"deferred {name}")

    for signum in _HANDLED:
        _held_until_configured[signum] = signal.getsignal(signum)
        signal.signal(signum, note)


def deliver_deferred() -> None:
    """End ``defer_until_configured``; raise the KeyboardInterrupt of a signal it noted."""
    if not _held_until_configured:
        return
    _release()
    noted = [entry for entry in _asked_to_stop if entry.startswith("deferred ")]
    if noted:
        _asked_to_stop.clear()  # delivered: pytest ends the run as interrupted
        name = noted[0].removeprefix("deferred ")
        raise KeyboardInterrupt(f"{name}: the run was asked to stop")


def _release() -> None:
    held = dict(_held_until_configured)
    _held_until_configured.clear()
    _restore(held)
