"""Serve the started app on a real TCP socket on 127.0.0.1, on the test's own event loop."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio

from .._core.errors import ConfigError
from .._diagnostics.timeouts import real_move_on_after, real_sleep
from .app import ASGIApp, Receive, Scope, Send

HOST = "127.0.0.1"
_UVICORN_EXIT_WAIT = 2.0  # seconds; uvicorn needs one 0.1 s tick to see should_exit
_SERVERS = {"asyncio": "uvicorn", "trio": "hypercorn"}


def _without_lifespan(app: ASGIApp) -> ASGIApp:
    """The app for the server: its lifespan already runs in the kit, so the server's lifespan
    messages are answered without starting the app a second time."""

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return served


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    return sock


def _import_server(backend: str) -> Any:
    name = _SERVERS.get(backend)
    if name is None:
        raise ConfigError(f"live_server has no server for the {backend} backend.")
    try:
        return __import__(name)
    except ImportError:
        raise ConfigError(
            f"live_server on {backend} serves the app with {name}, which is not installed: "
            "`pip install 'anyio-fastapi-testkit[live]'`."
        ) from None


@asynccontextmanager
async def _uvicorn(app: ASGIApp) -> AsyncIterator[str]:
    import uvicorn

    sock = _bound_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    stopped = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            stopped.set()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(serve)
        while not server.started:
            await real_sleep(0.005)
        try:
            yield f"http://{HOST}:{port}"
        finally:
            server.should_exit = True
            # uvicorn sees should_exit on its next 0.1 s tick; a tick scheduled while a test
            # froze time (freezegun moves asyncio's clock ahead) may never come: then cancel.
            with real_move_on_after(_UVICORN_EXIT_WAIT):
                await stopped.wait()
            task_group.cancel_scope.cancel()
    sock.close()


@asynccontextmanager
async def _hypercorn(app: ASGIApp) -> AsyncIterator[str]:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"{HOST}:0"]
    config.accesslog = None
    stop = anyio.Event()
    async with anyio.create_task_group() as task_group:
        binds = await task_group.start(
            partial(serve, app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        )
        try:
            yield str(binds[0])
        finally:
            stop.set()


@asynccontextmanager
async def live_server(app: ASGIApp, backend: str) -> AsyncIterator[str]:
    """Serve ``app`` (already started) until the block ends; yields its base URL."""
    _import_server(backend)
    serving = _uvicorn if backend == "asyncio" else _hypercorn
    async with serving(_without_lifespan(app)) as url:
        yield url
