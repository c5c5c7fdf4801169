"""What the kit watches while an async test runs: its time limit, the tasks it leaves behind,
and the code that blocks its loop. One wrapper around the test, installed only when needed."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import sniffio

from ._backends import backend_name, check_backend
from ._blocking import LoopMonitor, block_report
from ._config import Settings
from ._frames import innermost_user_frame
from ._tasks import TaskTracker, leak_report
from ._timeouts import MARKER, timeout_for, with_timeout
from ._warnings import BlockedLoopWarning, LeakedTaskWarning


def watched_test(item: pytest.Function, settings: Settings) -> Callable[..., Awaitable[Any]] | None:
    """The item's async test wrapped with the backend guard and the configured checks, or None
    for a test that is not async or not run by the kit (no ``anyio_backend``)."""
    test: Callable[..., Awaitable[Any]] = item.obj
    requested = item.funcargs.get("anyio_backend")
    if not inspect.iscoroutinefunction(test) or requested is None:
        return None
    test = _guarded(test, backend_name(requested), item.nodeid)
    seconds = timeout_for(item, settings.timeout)
    leaks, threshold = settings.leaked_tasks, settings.blocked_loop
    if seconds is None and leaks == "off" and threshold is None:
        return test
    original = item.obj
    if seconds is not None:
        marked = item.get_closest_marker(MARKER) is not None
        setting = f"@pytest.mark.{MARKER}" if marked else "testkit_timeout / --testkit-timeout"
        test = with_timeout(test, seconds, item.nodeid, setting)
    if leaks == "off" and threshold is None:
        return test
    nodeid = item.nodeid

    @functools.wraps(original)
    async def watched(*args: Any, **kwargs: Any) -> Any:
        # trio needs no tracker: a nursery cannot be left before its tasks end.
        on_asyncio = sniffio.current_async_library() == "asyncio"
        tracker = TaskTracker() if leaks != "off" and on_asyncio else None
        monitor = LoopMonitor(threshold) if threshold is not None else None
        try:
            result = await test(*args, **kwargs)
        except BaseException:
            if tracker is not None:
                tracker.discard()
            if monitor is not None:
                _report_blocks(nodeid, monitor)
            raise
        if monitor is not None:
            _report_blocks(nodeid, monitor)
        if tracker is not None and (leaked := await tracker.leftovers()):
            message = leak_report(nodeid, leaked, leaks)
            if leaks == "fail":
                pytest.fail(message, pytrace=False)
            place = innermost_user_frame(leaked[0][1])
            filename, lineno = (place[0].co_filename, place[1]) if place else ("<unknown>", 0)
            warnings.warn_explicit(message, LeakedTaskWarning, filename, lineno)
        return result

    return watched


def _guarded(
    test: Callable[..., Awaitable[Any]], backend: str, nodeid: str
) -> Callable[..., Awaitable[Any]]:
    # In the test's own coroutine rather than in a fixture: it costs no fixture set-up, and
    # it asks the library that really runs the test.
    @functools.wraps(test)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        check_backend(backend, nodeid)
        return await test(*args, **kwargs)

    return guarded


def _report_blocks(nodeid: str, monitor: LoopMonitor) -> None:
    for block in monitor.stop():
        message, filename, lineno = block_report(nodeid, block, monitor.threshold)
        warnings.warn_explicit(message, BlockedLoopWarning, filename, lineno)
