"""Leaked tasks (asyncio): tasks a test started that were still running when it ended.

On trio there is nothing to find: every task lives in a nursery, and a nursery cannot be left
before its tasks end. asyncio's ``create_task`` has no such owner, so the kit installs a task
factory on the loop while the test runs, recording where each task was created.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

import anyio

from .frames import Stack, format_stack, innermost_user_frame, location, user_part

# Loop iterations a task gets, after the test, to finish what the test's end set in motion
# (a closed stream, a cancelled scope); iterations, not seconds, so frozen clocks do not matter.
GRACE_ITERATIONS = 5
_STACK_LIMIT = 12

TaskFactory = Any  # asyncio's own type for it is private


def _creation_stack() -> Stack:
    stack: Stack = []
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and len(stack) < _STACK_LIMIT:
        stack.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    stack.reverse()
    return stack


class TaskTracker:
    """Records the tasks created on the running loop until ``stop()``."""

    __slots__ = ("_created", "_factory", "_loop", "_previous")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._previous: TaskFactory = self._loop.get_task_factory()
        self._created: list[tuple[asyncio.Task[Any], Stack]] = []
        # Kept: a bound method is a new object each time it is read, and stop() compares.
        self._factory: TaskFactory | None = self._record
        self._loop.set_task_factory(self._factory)  # type: ignore[arg-type]

    def _record(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Future[Any]:
        if self._previous is not None:
            task = self._previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        self._created.append((task, _creation_stack()))
        return task  # type: ignore[no-any-return]

    def stop(self) -> bool:
        """Stop recording; whether a recorded task is still running (then see leftovers())."""
        # Dropped, not only unset: the bound method refers to the tracker, a cycle that only the
        # garbage collector would free.
        factory, self._factory = self._factory, None
        if factory is not None and self._loop.get_task_factory() is factory:
            self._loop.set_task_factory(self._previous)
        if not self._created:
            return False
        if any(not task.done() for task, _ in self._created):
            return True
        self._created.clear()
        return False

    def _pending(self) -> list[tuple[asyncio.Task[Any], Stack]]:
        return [(task, stack) for task, stack in self._created if not task.done()]

    async def leftovers(self) -> list[tuple[asyncio.Task[Any], Stack]]:
        """After ``stop()`` found a task running: the recorded tasks still running after a
        short grace, cancelled.

        Tasks started in an anyio task group are left alone: the group waits for them (a
        session-scoped group, like the client's, owns them beyond the test).
        """
        await _iterate_while(self._pending)
        leaked = self._unowned()
        for task, _ in leaked:
            task.cancel()
        await _iterate_while(lambda: [task for task, _ in leaked if not task.done()])
        self._created.clear()
        return leaked

    def discard(self) -> None:
        """Stop recording after a failed test: cancel what it left, report nothing."""
        self.stop()
        for task, _ in self._unowned():
            task.cancel()
        self._created.clear()

    def _unowned(self) -> list[tuple[asyncio.Task[Any], Stack]]:
        """The recorded tasks still running that no anyio task group waits for."""
        pending = self._pending()
        if not pending:
            return []
        structured = {info.id for info in anyio.get_running_tasks() if info.parent_id is not None}
        return [(task, stack) for task, stack in pending if id(task) not in structured]


async def _iterate_while(pending: Callable[[], list[Any]]) -> None:
    with anyio.CancelScope(shield=True):
        for _ in range(GRACE_ITERATIONS):
            if not pending():
                return
            await asyncio.sleep(0)


def _describe(task: asyncio.Task[Any], stack: Stack) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", type(coro).__name__)
    return f"task {task.get_name()} ({name}), created at:\n{format_stack(user_part(stack))}"


def leak_report(nodeid: str, leaked: list[tuple[asyncio.Task[Any], Stack]], mode: str) -> str:
    count = f"{len(leaked)} task{'s' if len(leaked) > 1 else ''}"
    where = location(innermost_user_frame(leaked[0][1]))
    details = "\n\n".join(_describe(task, stack) for task, stack in leaked)
    return (
        f"{nodeid} left {count} running (first created at {where}); the kit cancelled "
        f"{'them' if len(leaked) > 1 else 'it'} so that nothing runs into the next test "
        f"(testkit_leaked_tasks = {mode}).\n\n{details}\n\n"
        "Fix one of: await the task (or cancel it and await it) before the test ends; start it "
        "in an `async with anyio.create_task_group() as tg:` block (`tg.start_soon(...)`), "
        "which waits for it; start it in a fixture that cancels it at teardown; or set "
        "testkit_leaked_tasks = off."
    )
