"""The app under test: importing it from a setting, and running its lifespan."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from asgi_lifespan import LifespanManager
from asgi_lifespan._exceptions import LifespanNotSupported

from ._errors import AppError, ConfigError
from ._imports import import_from_path

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def load_app(path: str) -> ASGIApp:
    """Import the app named by ``testkit_app`` and check that it is an ASGI app."""
    obj = import_from_path(path, "testkit_app", what="the ASGI app")
    if isinstance(obj, type):
        raise ConfigError(
            f"testkit_app = {path!r} names the class {obj.__name__}, not an app instance. "
            f"Name the instance (\"module:app\") or a factory call (\"module:create_app()\")."
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
        if scope["type"] in ("http", "websocket"):
            scope["state"] = dict(state)
        await app(scope, receive, send)

    app_with_state.__wrapped__ = app  # type: ignore[attr-defined]
    return app_with_state


@asynccontextmanager
async def running_lifespan(
    app: ASGIApp, *, startup_timeout: float, shutdown_timeout: float
) -> AsyncIterator[ASGIApp]:
    """Run the app's lifespan startup, yield the app ready for requests, then shut it down.

    asgi-lifespan runs the protocol; the kit adds readable errors (its timeouts raise a bare
    TimeoutError) and a per-request copy of the lifespan state (it shares one dict).
    """
    state: dict[str, Any] = {}

    async def recording_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            scope["state"] = state
        await app(scope, receive, send)

    name = app_name(app)
    manager = LifespanManager(
        recording_app, startup_timeout=startup_timeout, shutdown_timeout=shutdown_timeout
    )
    started = time.monotonic()
    try:
        await manager.__aenter__()
    except LifespanNotSupported:
        # Plain ASGI apps without a lifespan protocol are fine: there is nothing to start.
        yield app
        return
    except TimeoutError as exc:
        if time.monotonic() - started >= startup_timeout * 0.9:
            raise AppError(
                f"The lifespan startup of the app ({name}) did not finish within "
                f"{startup_timeout:g} s. Raise the limit with the testkit_startup_timeout ini "
                "option, or look for a startup step that waits forever (a server that is not "
                "there, a lock, an endless loop)."
            ) from exc
        raise _startup_failed(name, exc) from exc
    except Exception as exc:
        raise _startup_failed(name, exc) from exc
    try:
        yield _with_state_copy(app, state)
    finally:
        started = time.monotonic()
        try:
            await manager.__aexit__(None, None, None)
        except TimeoutError as exc:
            if time.monotonic() - started < shutdown_timeout * 0.9:
                raise
            raise AppError(
                f"The lifespan shutdown of the app ({name}) did not finish within "
                f"{shutdown_timeout:g} s. Raise the limit with the testkit_shutdown_timeout ini "
                "option, or look for a shutdown step that waits forever (a background task "
                "that is never cancelled, a connection that is never closed)."
            ) from exc


def _startup_failed(name: str, exc: BaseException) -> AppError:
    return AppError(
        f"The lifespan startup of the app ({name}) raised {type(exc).__name__}: {exc}. "
        "The app's own traceback is above; no test can run until startup works."
    )
