"""Per-test and per-fixture timeouts inside the event loop, failing with every task's stack.

The time is kept by the kit's watchdog thread, so tests that freeze time do not stop it."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import inspect
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn

import anyio
import pytest

from .._core.clock import Timer, call_later, loop_poster
from .frames import without_machinery

MARKER = "testkit_timeout"
TIMED_OUT = "_testkit_timed_out"


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
            or _generator_of_step(awaitable)
        )


def _generator_of_step(awaitable: object) -> object:
    """The async generator behind an ``asend()``/``athrow()`` awaitable (how generator
    fixtures are driven), which offers no attribute leading to it."""
    if awaitable is None or not inspect.isawaitable(awaitable):
        return None
    return next((ref for ref in gc.get_referents(awaitable) if inspect.isasyncgen(ref)), None)


def _format(title: str, frames: list[FrameType]) -> str:
    lines = traceback.format_list(traceback.StackSummary.extract((f, f.f_lineno) for f in frames))
    return f"{title}:\n" + "".join(lines).rstrip()


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


def _thread_frames(frame: FrameType | None) -> list[FrameType]:
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames[::-1]


def _busy_threads() -> list[tuple[str, list[FrameType]]]:
    """Other threads running code of the test or the app (e.g. a worker thread the loop
    waits for), with their stacks."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    here = threading.get_ident()
    return [
        (names.get(ident, str(ident)), user_frames)
        for ident, frame in sys._current_frames().items()
        if ident != here and (user_frames := without_machinery(_thread_frames(frame)))
    ]


def task_report(in_file: str | None = None) -> str:
    """Where every task of the running loop is waiting (and where busy threads are), for the
    timeout failure; with ``in_file``, only the tasks running code of that file."""
    reports = [
        _format(f"task {name}, awaiting at", user_frames)
        for name, frames in _running_tasks()
        if (user_frames := without_machinery(frames))
        and (in_file is None or any(f.f_code.co_filename == in_file for f in user_frames))
    ]
    reports += [_format(f"thread {name}, running", frames) for name, frames in _busy_threads()]
    return "\n\n".join(reports) or "(no task or thread was running code of the test or the app)"


class Limit:
    """A cancel scope cancelled after ``seconds`` of real time, stacks taken just before.

    The watchdog thread keeps the time (loop clocks may be frozen) and posts the expiry to the
    loop, so the stacks are those of the moment the limit was reached. ``start()`` and
    ``stop()`` may alternate, e.g. around a generator fixture's setup and its teardown.
    """

    def __init__(self, seconds: float, *, shield: bool = False) -> None:
        self.seconds = seconds
        self.scope = anyio.CancelScope(shield=shield)
        self.report: str | None = None
        self._timer: Timer | None = None
        self._also: set[anyio.CancelScope] = set()  # see cancelled_with_the_test

    def start(self) -> None:
        post = loop_poster()

        def expire_on_loop() -> None:
            if timer is self._timer and not timer.cancelled:
                self.report = task_report()
                self.scope.cancel()
                for scope in list(self._also):
                    scope.cancel()

        timer = call_later(self.seconds, lambda: post(expire_on_loop))
        self._timer = timer

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# The limit of the test running in this context; the app's requests run in copies of it.
_TEST_LIMIT: contextvars.ContextVar[Limit | None] = contextvars.ContextVar(
    "anyio_fastapi_testkit_test_limit", default=None
)


@contextmanager
def cancelled_with_the_test() -> Iterator[None]:
    """Let the running test's time limit cancel what runs inside, also where a caller shielded
    it (nothing without a limit, or outside a test).

    FastAPI runs the exit of a yield dependency in a shielded cancel scope, which the test's
    limit does not reach: the kit's request session, committed and closed there, would wait
    for a server that stopped answering for ever, and the test (and the run) with it. A scope
    of its own inside the shield is cancelled with the test, at once if the limit has passed.
    """
    limit = _TEST_LIMIT.get()
    if limit is None:
        yield
        return
    with anyio.CancelScope() as scope:
        limit._also.add(scope)
        if limit.report is not None:
            scope.cancel()
        try:
            yield
        finally:
            limit._also.discard(scope)


@contextmanager
def real_move_on_after(seconds: float, *, shield: bool = False) -> Iterator[anyio.CancelScope]:
    """``anyio.move_on_after`` timed by the watchdog thread: frozen loop clocks cannot stop it."""
    limit = Limit(seconds, shield=shield)
    with limit.scope:
        limit.start()
        try:
            yield limit.scope
        finally:
            limit.stop()


async def real_sleep(seconds: float) -> None:
    """``anyio.sleep`` timed by the watchdog thread, for the kit's own polling."""
    with real_move_on_after(seconds):
        await anyio.sleep_forever()


def with_timeout(
    test: Callable[..., Awaitable[Any]], seconds: float, nodeid: str, setting: str
) -> Callable[..., Awaitable[Any]]:
    """Wrap an async test so that it is cancelled and failed after ``seconds``."""

    @functools.wraps(test)
    async def timed_test(*args: Any, **kwargs: Any) -> Any:
        limit = Limit(seconds)
        result: Any = None
        token = _TEST_LIMIT.set(limit)
        try:
            with limit.scope:
                limit.start()
                try:
                    result = await test(*args, **kwargs)
                finally:
                    limit.stop()
                    _TEST_LIMIT.reset(token)
        except BaseException as exc:
            if limit.report is None:
                raise
            _fail(f"{nodeid} did not finish within {seconds:g} s ({setting})", limit.report, exc)
        if limit.report is not None:
            _fail(f"{nodeid} did not finish within {seconds:g} s ({setting})", limit.report)
        return result

    return timed_test


def timeout_failure(what: str, report: str) -> BaseException:
    """The failure to raise for ``what``, cancelled at its limit, with the tasks' stacks."""
    message = (
        f"{what} and was cancelled. Where each task was waiting when the limit was reached:"
        f"\n\n{report}"
    )
    failure = pytest.fail.Exception(message, pytrace=False)
    setattr(failure, TIMED_OUT, True)  # how a hung server shows: see server_loss
    return failure


def timed_out(error: BaseException) -> bool:
    """Whether ``error`` is a kit's time limit failure."""
    return bool(getattr(error, TIMED_OUT, False))


def _fail(what: str, report: str, cause: BaseException | None = None) -> NoReturn:
    failure = timeout_failure(what, report)
    if cause is None:
        raise failure
    raise failure from cause


def _bound(func: Callable[..., Any], request: pytest.FixtureRequest) -> Callable[..., Any]:
    """The fixture function bound to the test's instance, as pytest and anyio bind it."""
    instance = request.instance
    if instance is not None and inspect.ismethod(func) and type(func.__self__) is type(instance):
        bound: Callable[..., Any] = func.__func__.__get__(instance)
        return bound
    return func


def _timed_fixture(
    func: Callable[..., Any], seconds: float, what: str, setting: str
) -> Callable[..., Any]:
    """The fixture function with its setup and its teardown (after the yield) each limited."""

    def failure(phase: str) -> str:
        return f"The {phase} of {what} did not finish within {seconds:g} s ({setting})"

    if inspect.isasyncgenfunction(func):

        @functools.wraps(func)
        async def timed_generator(**kwargs: Any) -> AsyncIterator[Any]:
            limit = Limit(seconds)
            phase = "setup"
            generator = func(**kwargs)
            try:
                # One scope from setup to teardown: the fixture's own scopes and task groups
                # opened before its yield nest inside it, and close before it does.
                with limit.scope:
                    limit.start()
                    try:
                        value = await generator.asend(None)
                    finally:
                        limit.stop()
                    yield value
                    phase = "teardown"
                    limit.start()
                    try:
                        await generator.asend(None)
                    except StopAsyncIteration:
                        pass
                    else:
                        await generator.aclose()
                        raise RuntimeError(f"{what} yielded more than once")
                    finally:
                        limit.stop()
            except GeneratorExit:
                raise
            except BaseException as exc:
                if limit.report is None:
                    raise
                _fail(failure(phase), limit.report, exc)
            if limit.report is not None:
                _fail(failure(phase), limit.report)

        return timed_generator

    @functools.wraps(func)
    async def timed_coroutine(**kwargs: Any) -> Any:
        limit = Limit(seconds)
        try:
            with limit.scope:
                limit.start()
                try:
                    return await func(**kwargs)
                finally:
                    limit.stop()
        except BaseException as exc:
            if limit.report is None:
                raise
            _fail(failure("setup"), limit.report, exc)
        _fail(failure("setup"), limit.report or "")

    return timed_coroutine


def timed_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest, default: float | None
) -> Callable[..., Any] | None:
    """The timed stand-in for an async fixture's function, or None if it has no limit.

    anyio's own ``pytest_fixture_setup`` wrapper runs ``fixturedef.func`` on the test's loop;
    put there by a wrapper entered before anyio's, the timed function is what it runs.
    A function-scoped fixture takes the test's marker; wider scopes take the setting. A
    wider-scoped fixture without a setting is answered without looking further.
    """
    function_scoped = fixturedef.scope == "function"
    if default is None and not function_scoped:
        return None
    func = fixturedef.func
    if not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)):
        return None
    if "anyio_backend" not in request.fixturenames:
        return None
    marked = function_scoped and request.node.get_closest_marker(MARKER) is not None
    seconds = timeout_for(request.node, default) if marked else default
    if seconds is None:
        return None
    setting = f"@pytest.mark.{MARKER}" if marked else "testkit_timeout / --testkit-timeout"
    what = f"fixture {fixturedef.argname!r} ({fixturedef.scope}-scoped)"
    return _timed_fixture(_bound(func, request), seconds, what, setting)
