"""Per-test timeouts enforced inside the event loop, failing with every task's await stack."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import Any

import anyio
import pytest

MARKER = "testkit_timeout"


def timeout_for(item: pytest.Item, default: float | None) -> float | None:
    """The item's limit: its ``testkit_timeout`` marker, else the setting (None: no limit)."""
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return default
    seconds = marker.args[0] if marker.args else marker.kwargs.get("seconds")
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.{MARKER} needs a positive number of seconds, "
            f"e.g. @pytest.mark.{MARKER}(5); got {seconds!r}."
        )
    return float(seconds)


def _await_frames(awaitable: Any) -> Iterator[FrameType]:
    """The frames of a coroutine and of everything it is awaiting, outermost first."""
    while awaitable is not None:
        frame = (
            getattr(awaitable, "cr_frame", None)
            or getattr(awaitable, "gi_frame", None)
            or getattr(awaitable, "ag_frame", None)
        )
        if frame is not None:
            yield frame
        awaitable = (
            getattr(awaitable, "cr_await", None)
            or getattr(awaitable, "gi_yieldfrom", None)
            or getattr(awaitable, "ag_await", None)
        )


def _library_dirs() -> tuple[str, ...]:
    modules = [anyio, asyncio, sys.modules[__name__.rpartition(".")[0]], sys.modules.get("trio")]
    return tuple(os.path.dirname(m.__file__) + os.sep for m in modules if m and m.__file__)


def _user_frames(frames: list[FrameType]) -> list[FrameType]:
    """Frames of the test's and the app's code: the event loop's own internals are noise."""
    library = _library_dirs()
    return [f for f in frames if not f.f_code.co_filename.startswith(library)]


def _format(name: str, frames: list[FrameType]) -> str:
    lines = traceback.format_list(traceback.StackSummary.extract((f, f.f_lineno) for f in frames))
    return f"task {name}, awaiting at:\n" + "".join(lines).rstrip()


def _running_tasks() -> list[tuple[str, list[FrameType]]]:
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            root = trio.lowlevel.current_root_task()
        except RuntimeError:
            pass
        else:
            found: list[tuple[str, list[FrameType]]] = []
            pending = [root]
            while pending:
                task = pending.pop()
                found.append((task.name, list(_await_frames(task.coro))))
                for nursery in task.child_nurseries:
                    pending.extend(nursery.child_tasks)
            return found
    return [
        (task.get_name(), list(_await_frames(task.get_coro())))
        for task in asyncio.all_tasks()
        if not task.done()
    ]


def task_report() -> str:
    """Where every task of the running loop is waiting, for the timeout failure."""
    reports = [
        _format(name, user_frames)
        for name, frames in _running_tasks()
        if (user_frames := _user_frames(frames)) and not name.endswith(_watch.__name__)
    ]
    return "\n\n".join(reports) or "(no task was running code of the test or the app)"


async def _watch(seconds: float, scope: anyio.CancelScope, report: list[str]) -> None:
    await anyio.sleep(seconds)
    # Taken before cancelling: afterwards every stack has unwound.
    report.append(task_report())
    scope.cancel()


def with_timeout(
    test: Callable[..., Awaitable[Any]], seconds: float, nodeid: str, setting: str
) -> Callable[..., Awaitable[Any]]:
    """Wrap an async test so that it is cancelled and failed after ``seconds``."""

    @functools.wraps(test)
    async def timed_test(*args: Any, **kwargs: Any) -> Any:
        report: list[str] = []
        result: Any = None
        async with anyio.create_task_group() as watchdog:
            with anyio.CancelScope() as test_scope:
                watchdog.start_soon(_watch, seconds, test_scope, report)
                result = await test(*args, **kwargs)
            watchdog.cancel_scope.cancel()
        if test_scope.cancelled_caught and report:
            pytest.fail(
                f"{nodeid} did not finish within {seconds:g} s ({setting}) and was cancelled. "
                f"Where each task was waiting when the limit was reached:\n\n{report[0]}",
                pytrace=False,
            )
        return result

    return timed_test
