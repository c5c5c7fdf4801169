"""What the kit watches while an async test runs: its backend, its time limit, the tasks it
leaves behind and the code that blocks its loop. One wrapper around the test.

The wrapper is a ``functools.partial`` of one coroutine function rather than a closure made
per test (and dressed with ``functools.wraps``); the checks cost plain attribute writes while
the test runs, and a loop iteration only when a task was really left behind.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import pytest

from .._core.backends import backend_name, check_backend
from .._core.config import Settings
from .._core.warnings import BlockedLoopWarning, LeakedTaskWarning
from .blocking import MONITOR, WatchedTest, block_report
from .frames import innermost_user_frame
from .interrupts import run_interruptible
from .tasks import TaskTracker, leak_report
from .timeouts import MARKER, timeout_for, with_timeout


class AroundCall(Protocol):
    """What the kit's transaction fixture puts in the item's stash (``AROUND_CALL_KEY``) for
    the test's call: it wraps the test, within its time limit, so that the same call ends the
    test's transaction (``TestTransaction.around_call``)."""

    def __call__(
        self, test: Callable[..., Awaitable[Any]], end_limit: tuple[float, str] | None, /
    ) -> Callable[..., Awaitable[Any]]: ...


# Through the stash, rather than an import of the transaction's module: pytest-xdist's
# controller, which loads the plugin, must not load SQLAlchemy.
AROUND_CALL_KEY = pytest.StashKey[AroundCall]()


def runs_watched(item: pytest.Item, fixturenames: Sequence[str]) -> bool:
    """Whether the kit will run ``item`` through its wrapper (``watched_test``)."""
    return "anyio_backend" in fixturenames and inspect.iscoroutinefunction(
        getattr(item, "obj", None)
    )


def watched_test(item: pytest.Function, settings: Settings) -> Callable[..., Awaitable[Any]] | None:
    """The item's async test wrapped with the backend guard and the configured checks, or None
    for a test that is not async or not run by the kit (no ``anyio_backend``)."""
    test: Callable[..., Awaitable[Any]] = item.obj
    requested = item.funcargs.get("anyio_backend")
    if requested is None or not inspect.iscoroutinefunction(test):
        return None
    # Innermost: Ctrl-C cancels the test alone; its time limit and transaction end as usual.
    test = functools.partial(run_interruptible, test, item.nodeid, str(item.path))
    seconds = timeout_for(item, settings.timeout)
    end_limit: tuple[float, str] | None = None
    if seconds is not None:
        marked = item.get_closest_marker(MARKER) is not None
        setting = f"@pytest.mark.{MARKER}" if marked else "testkit_timeout / --testkit-timeout"
        test = with_timeout(test, seconds, item.nodeid, setting)
        end_limit = (seconds, setting)
    around_call = item.stash.get(AROUND_CALL_KEY, None)
    if around_call is not None:
        # Outside the test's time limit, as a fixture's teardown would be, with a limit of its
        # own: a test cancelled at its limit still gets its database cleaned up.
        test = around_call(test, end_limit)
    backend = backend_name(requested)
    # trio needs no tracker: a nursery cannot be left before its tasks end.
    track = settings.leaked_tasks != "off" and backend == "asyncio"
    return functools.partial(
        _run_watched,
        test,
        backend,
        item.nodeid,
        track,
        settings.leaked_tasks,
        settings.blocked_loop,
    )


async def _run_watched(
    test: Callable[..., Awaitable[Any]],
    backend: str,
    nodeid: str,
    track: bool,
    leaks: str,
    threshold: float | None,
    /,
    **kwargs: Any,
) -> Any:
    # The guard is here rather than in a fixture: it costs no fixture set-up, and it asks the
    # library that really runs the test.
    check_backend(backend, nodeid)
    tracker = TaskTracker() if track else None
    watch = MONITOR.start(threshold) if threshold is not None else None
    try:
        result = await test(**kwargs)
    except BaseException:
        if tracker is not None:
            tracker.discard()
        if watch is not None:
            _report_blocks(nodeid, watch)
        raise
    if watch is not None:
        _report_blocks(nodeid, watch)
    if tracker is not None and tracker.stop() and (leaked := await tracker.leftovers()):
        message = leak_report(nodeid, leaked, leaks)
        if leaks == "fail":
            pytest.fail(message, pytrace=False)
        place = innermost_user_frame(leaked[0][1])
        filename, lineno = (place[0].co_filename, place[1]) if place else ("<unknown>", 0)
        warnings.warn_explicit(message, LeakedTaskWarning, filename, lineno)
    return result


def _report_blocks(nodeid: str, watch: WatchedTest) -> None:
    for block in MONITOR.stop(watch):
        message, filename, lineno = block_report(nodeid, block, watch.threshold)
        warnings.warn_explicit(message, BlockedLoopWarning, filename, lineno)
