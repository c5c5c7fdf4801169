"""The app under test: importing it from a setting, and running its lifespan."""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from asgi_lifespan import LifespanManager, LifespanNotSupported

from .._core.errors import AppError, ConfigError
from .._core.imports import import_from_path
from .._diagnostics.timeouts import real_move_on_after
from .routes import route_dependencies

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def load_app(path: str) -> ASGIApp:
    """Import the app named by ``testkit_app`` and check that it is an ASGI app."""
    __tracebackhide__ = True
    try:
        obj = import_from_path(path, "testkit_app", what="the ASGI app")
    except ConfigError as exc:
        hint = missing_setting_hint(exc.__cause__)
        if not hint:
            raise
        raise ConfigError(f"{exc}{hint}") from exc.__cause__
    if isinstance(obj, type):
        raise ConfigError(
            f"testkit_app = {path!r} names the class {obj.__name__}, not an app instance. "
            f'Name the instance ("module:app") or a factory call ("module:create_app()").'
        )
    call = getattr(obj, "__call__", None)  # noqa: B004 - the ASGI entry point itself
    if not (inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(call)):
        hint = (
            f" It is a function: if it builds the app, write {path}()."
            if inspect.isfunction(obj)
            else ""
        )
        raise ConfigError(
            f"testkit_app = {path!r} is a {type(obj).__name__}, not an ASGI app "
            f"(an async callable taking scope, receive and send).{hint}"
        )
    app: ASGIApp = obj
    return app


def app_name(app: object) -> str:
    title = getattr(app, "title", None)
    kind = type(app).__name__
    return f"{kind} {title!r}" if isinstance(title, str) else kind


def _with_state_copy(app: ASGIApp, state: dict[str, Any]) -> ASGIApp:
    """Give every request a shallow copy of the lifespan state, as ASGI servers do."""

    async def app_with_state(scope: Scope, receive: Receive, send: Send) -> None:
        __tracebackhide__ = True
        if scope["type"] in ("http", "websocket"):
            scope["state"] = dict(state)
        await app(scope, receive, send)

    app_with_state.__wrapped__ = app  # type: ignore[attr-defined]
    return app_with_state


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or the exception itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _app_exception(exc: BaseException) -> BaseException:
    """The app's own exception out of the task-group wrappers around it."""
    leaves = [
        leaf for leaf in _leaves(exc) if not isinstance(leaf, anyio.get_cancelled_exc_class())
    ]
    return leaves[0] if len(leaves) == 1 else exc


@asynccontextmanager
async def running_lifespan(
    app: ASGIApp, *, startup_timeout: float, shutdown_timeout: float
) -> AsyncIterator[ASGIApp]:
    """Run the app's lifespan startup, yield the app ready for requests, then shut it down.

    asgi-lifespan speaks the protocol. The kit runs it in a task of its own and enforces the
    timeouts itself, because asgi-lifespan raises a bare TimeoutError and, on trio, waits
    forever for a startup that timed out. Requests get a copy of the lifespan state (asgi-lifespan
    shares one dict), as ASGI servers give them.
    """
    __tracebackhide__ = True
    state: dict[str, Any] = {}

    async def recording_app(scope: Scope, receive: Receive, send: Send) -> None:
        __tracebackhide__ = True
        if scope["type"] == "lifespan":
            scope["state"] = state
        await app(scope, receive, send)

    started, stop, finished = anyio.Event(), anyio.Event(), anyio.Event()
    supported = True

    async def serve() -> None:
        __tracebackhide__ = True
        nonlocal supported
        try:
            async with LifespanManager(recording_app, startup_timeout=None, shutdown_timeout=None):
                started.set()
                await stop.wait()
        except BaseException as exc:
            if not all(isinstance(leaf, LifespanNotSupported) for leaf in _leaves(exc)):
                raise
            # Plain ASGI apps without the lifespan protocol are fine: nothing to start.
            supported = False
            started.set()
        finally:
            finished.set()

    name = app_name(app)
    timed_out: str | None = None
    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(serve)
            with real_move_on_after(startup_timeout) as startup_wait:
                await started.wait()
            if startup_wait.cancelled_caught:
                timed_out = "startup"
                task_group.cancel_scope.cancel()
            else:
                try:
                    yield _with_state_copy(app, state) if supported else app
                finally:
                    stop.set()
                    with real_move_on_after(shutdown_timeout) as shutdown_wait:
                        await finished.wait()
                    if shutdown_wait.cancelled_caught:
                        timed_out = "shutdown"
                        task_group.cancel_scope.cancel()
    except BaseException as exc:
        if timed_out is not None or isinstance(exc, GeneratorExit):
            raise
        cause = _app_exception(exc)
        phase = "startup" if not started.is_set() else "shutdown"
        raise AppError(
            f"The lifespan {phase} of the app ({name}) raised {type(cause).__name__}: {cause}. "
            "The app's own traceback is above"
            + ("; no test can run until startup works." if phase == "startup" else ".")
            + missing_setting_hint(cause)
        ) from cause
    if timed_out is not None:
        limit, setting = (
            (startup_timeout, "testkit_startup_timeout")
            if timed_out == "startup"
            else (shutdown_timeout, "testkit_shutdown_timeout")
        )
        raise AppError(
            f"The lifespan {timed_out} of the app ({name}) did not finish within {limit:g} s. "
            f"Raise the limit with the {setting} ini option, or look for a {timed_out} step "
            "that waits forever (a server that is not there, a lock, a background task that "
            "is never cancelled)."
        )


def check_uses_dependency(app: object, dependency: object, path: str) -> None:
    """Raise ConfigError unless the app uses the dependency ``testkit_session_dependency`` names."""
    __tracebackhide__ = True
    if not uses_dependency(app, dependency):
        raise ConfigError(
            f"testkit_session_dependency = {path!r} is not a dependency of any route of the app, "
            "so overriding it would change nothing. Name the function your routes pass to "
            'Depends() (e.g. "myproject.db:get_session"), or unset the option.'
        )


# A KeyError for a key written like an environment variable: os.environ["DATABASE_URL"].
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
# How far down the causes and contexts of an error a missing setting is looked for.
_MOST_LINKS = 8


def _missing_settings(error: BaseException | None) -> list[str]:
    """The settings that ``error`` (or an error it was raised from) says are missing: the key
    of a ``KeyError`` written like an environment variable, or the fields of a pydantic
    ``ValidationError`` (pydantic-settings) whose errors are of type ``missing``."""
    for _ in range(_MOST_LINKS):
        if error is None:
            return []
        if isinstance(error, KeyError) and len(error.args) == 1:
            key = error.args[0]
            if isinstance(key, str) and _ENV_NAME.match(key):
                return [key]
        errors = getattr(error, "errors", None)
        if type(error).__name__ == "ValidationError" and callable(errors):
            try:
                details = errors()
            except Exception:  # not pydantic's after all
                details = []
            missing = [
                ".".join(str(part) for part in detail.get("loc", ()))
                for detail in details
                if isinstance(detail, dict) and detail.get("type") == "missing"
            ]
            if missing:
                return missing
        error = error.__cause__ or error.__context__
    return []


def missing_setting_hint(error: BaseException | None) -> str:
    """Advice to add to an error of the app's that says a setting is missing (else ``""``):
    that ``testkit_database_env`` may be the fix."""
    missing = _missing_settings(error)
    if not missing:
        return ""
    return (
        f"\nThe app stopped on a missing setting ({', '.join(missing)}): if it reads its "
        "settings from the environment, the tests' environment lacks it. testkit_database_env "
        "may be the fix: it sets environment variables for the app before the app is "
        "imported, e.g. testkit_database_env = DATABASE_URL (the test database's URL), "
        '"DB_HOST={host}" style templates ({url}, {host}, {port}, {user}, {password}, '
        "{database}) and plain NAME=value entries (APP_ENV=test). Or set the variable in the "
        "environment pytest runs in."
    )


def uses_dependency(app: object, dependency: object) -> bool:
    """Whether the app uses ``dependency`` anywhere: a route, an included router (at any
    depth, with its ``dependencies=``), a mounted sub-app, or a sub-dependency of any of these.

    Compared as FastAPI matches ``dependency_overrides``, by equality: a bound method such as
    ``container.session`` is a new object at each access, equal to the one the routes hold.
    """
    return any(call == dependency for call in route_dependencies(app))
