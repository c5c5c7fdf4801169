"""A websocket client for tests: speaks ASGI to the app in-process, on the test's own loop.

httpx has no websocket client, and httpx-ws (and httpx2's copy of it) needs a different
transport per library, hides the app's exceptions behind a 1011 close and gives the app one
second to accept. This client needs neither httpx nor a socket: it hands the app ASGI
messages directly, so dependency overrides and the lifespan state apply as for HTTP requests.

Each connection runs the app in an anyio task group that ``async with`` enters and exits in
the test's task (cancel scopes nest as anyio and trio require). The app task never raises
into the task group, which would cancel the test: its exception is kept and raised to the
test by the next ``receive_*()``, ``send_*()`` or ``close()``, or when the block ends.
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import anyio
from anyio.abc import TaskGroup
from starlette.websockets import WebSocketDisconnect

from .._diagnostics.timeouts import real_move_on_after
from .app import ASGIApp, Message, Scope

CLOSE_TIMEOUT = 1.0
ABNORMAL_CLOSURE = 1006  # the code a client sees when the connection ends without a close


class WebSocketClosed(WebSocketDisconnect):
    """The app closed the websocket; ``code`` and ``reason`` are those it sent.

    A starlette ``WebSocketDisconnect``, as raised by starlette's TestClient.
    """

    def __init__(self, path: str, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.path = path

    def __str__(self) -> str:
        because = f" (reason: {self.reason!r})" if self.reason else ""
        return f"The app closed the websocket {self.path} with code {self.code}{because}."


class WebSocketRejected(WebSocketClosed):
    """The app closed the websocket before accepting it: the handshake was refused."""

    def __str__(self) -> str:
        because = f" (reason: {self.reason!r})" if self.reason else ""
        return (
            f"The app rejected the websocket connection to {self.path}: it closed it with code "
            f"{self.code}{because} before accepting it."
        )


class ClientDisconnected(OSError):
    """Raised by the app's ``send()`` once the test has closed the websocket.

    ASGI servers raise an ``OSError`` there; starlette turns it into ``WebSocketDisconnect``.
    """


def _headers(headers: Mapping[str, str], subprotocols: Sequence[str]) -> list[tuple[bytes, bytes]]:
    """The handshake request's headers: a browser's defaults, then the test's own."""
    key = base64.b64encode(os.urandom(16)).decode()
    merged = {
        "host": "testserver",
        "connection": "upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": key,
    }
    if subprotocols:
        merged["sec-websocket-protocol"] = ", ".join(subprotocols)
    merged.update({name.lower(): value for name, value in headers.items()})
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in merged.items()]


def websocket_scope(
    path: str, headers: Mapping[str, str] | None = None, subprotocols: Sequence[str] = ()
) -> Scope:
    """The ASGI websocket scope for ``path`` (which may carry a query string) on testserver."""
    url = urlsplit(path)
    if url.scheme or url.netloc:
        raise ValueError(
            f"websocket_connect takes a path on the app (like '/ws?room=1'), not {path!r}."
        )
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 123),
        "root_path": "",
        "path": unquote(url.path),
        "raw_path": url.path.encode(),
        "query_string": url.query.encode(),
        "headers": _headers(headers or {}, subprotocols),
        "subprotocols": list(subprotocols),
    }


class WebSocketSession:
    """The test's end of one websocket connection to the app; use it with ``async with``.

    Entering it runs the handshake: it raises :class:`WebSocketRejected` if the app closes
    the connection instead of accepting it. ``receive_*()`` raises :class:`WebSocketClosed`
    once the app has closed the connection; ``close_code`` and ``close_reason`` then hold what
    the app sent. Leaving the block closes the connection with code 1000 if the test has not.
    """

    def __init__(self, app: ASGIApp, scope: Scope, *, close_timeout: float = CLOSE_TIMEOUT) -> None:
        self._app = app
        self.scope = scope
        self.path = scope["path"]
        self._close_timeout = close_timeout
        self.accepted_subprotocol: str | None = None
        self.extra_headers: list[tuple[bytes, bytes]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self._to_app, self._app_inbox = anyio.create_memory_object_stream[Message](math.inf)
        self._app_outbox, self._from_app = anyio.create_memory_object_stream[Message](math.inf)
        self._task_group: TaskGroup | None = None
        self._entered = False
        self._closed_by_test = False
        self._close_code_sent = 1000
        # Shielded: a timeout around the block must not cancel the app before it sees the
        # close, as a timeout in a real client would not reach into the server.
        self._cancel_scope = anyio.CancelScope(shield=True)
        self._finished = anyio.Event()
        self._error: BaseException | None = None

    # --- the app's side ---------------------------------------------------------------------

    async def _run_app(self) -> None:
        try:
            with self._cancel_scope:
                try:
                    await self._app(self.scope, self._app_receive, self._app_send)
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:  # pytest.skip() and co. included
                    # Raising WebSocketDisconnect after the test closed is the app's way of
                    # ending, not a failure (uvicorn would log it, the test cannot fix it).
                    if not (self._closed_by_test and _is_disconnect(exc)):
                        self._error = exc
        finally:
            self._app_outbox.close()
            self._finished.set()

    async def _app_receive(self) -> Message:
        try:
            return await self._app_inbox.receive()
        except anyio.EndOfStream:
            return {"type": "websocket.disconnect", "code": self._close_code_sent}

    async def _app_send(self, message: Message) -> None:
        if self._closed_by_test:
            await anyio.lowlevel.checkpoint()
            raise ClientDisconnected(f"The test closed the websocket {self.path}.")
        await self._app_outbox.send(message)

    # --- connecting and closing -------------------------------------------------------------

    async def __aenter__(self) -> WebSocketSession:
        if self._entered:
            raise RuntimeError(
                f"This websocket session to {self.path} was already used; connect again."
            )
        self._entered = True
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        try:
            task_group.start_soon(self._run_app, name=f"ASGI websocket: {self.path}")
            self._to_app.send_nowait({"type": "websocket.connect"})
            await self._handshake()
        except BaseException as exc:
            await self._shutdown(exc)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._shutdown(exc_value)

    async def _handshake(self) -> None:
        try:
            message = await self._from_app.receive()
        except anyio.EndOfStream:
            await self._finished.wait()
            self._raise_app_error()
            raise WebSocketRejected(
                self.path, ABNORMAL_CLOSURE, "the app returned without accepting or closing"
            ) from None
        kind = message["type"]
        if kind == "websocket.close":
            self._record_close(message)
            raise WebSocketRejected(self.path, self.close_code or 1000, self.close_reason)
        if kind != "websocket.accept":
            raise RuntimeError(
                f"The app sent {kind!r} before accepting the websocket connection to "
                f"{self.path}; expected 'websocket.accept' or 'websocket.close'."
            )
        self.accepted_subprotocol = message.get("subprotocol")
        self.extra_headers = list(message.get("headers", []))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection from the test's side and wait for the app to end.

        The app receives ``websocket.disconnect`` with ``code`` and gets ``close_timeout``
        seconds to return before it is cancelled. Raises the app's exception, if it had one.
        """
        if not self._closed_by_test:
            self._closed_by_test = True
            self._close_code_sent = code
            self._to_app.send_nowait(
                {"type": "websocket.disconnect", "code": code, "reason": reason}
            )
            self._to_app.close()
            await self._join_app()
        self._raise_app_error()

    async def _join_app(self) -> None:
        try:
            # Shielded, so that a test leaving by cancellation still lets the app see the
            # disconnect and end its own way.
            with real_move_on_after(self._close_timeout, shield=True):
                await self._finished.wait()
        finally:
            with anyio.CancelScope(shield=True):
                self._cancel_scope.cancel()
                await self._finished.wait()

    async def _shutdown(self, exc_value: BaseException | None) -> None:
        """Close the connection, then leave the task group (both always)."""
        try:
            await self.close()
        finally:
            for stream in (self._to_app, self._app_inbox, self._app_outbox, self._from_app):
                stream.close()
            task_group, self._task_group = self._task_group, None
            if task_group is not None:
                # Only a cancellation goes into the task group: any other exception would
                # come out of it wrapped in an ExceptionGroup instead of as itself.
                if isinstance(exc_value, anyio.get_cancelled_exc_class()):
                    await task_group.__aexit__(type(exc_value), exc_value, exc_value.__traceback__)
                else:
                    await task_group.__aexit__(None, None, None)

    def _raise_app_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _record_close(self, message: Message) -> None:
        self.close_code = message.get("code") or 1000
        self.close_reason = message.get("reason") or ""

    # --- the test's side --------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """Send a raw ASGI message to the app (``send_text`` and co. build them)."""
        if self._finished.is_set():
            self._raise_app_error()
        if self._closed_by_test:
            raise RuntimeError(f"The test already closed the websocket {self.path}.")
        if self.close_code is not None:
            raise WebSocketClosed(self.path, self.close_code, self.close_reason)
        await self._to_app.send(message)

    async def send_text(self, data: str) -> None:
        await self.send({"type": "websocket.receive", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        await self.send({"type": "websocket.receive", "bytes": data})

    async def send_json(self, data: Any, mode: str = "text") -> None:
        """Send ``data`` as JSON in a text message, or a binary one with ``mode="binary"``."""
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        if mode == "binary":
            await self.send_bytes(text.encode())
        elif mode == "text":
            await self.send_text(text)
        else:
            raise ValueError(f"send_json mode must be 'text' or 'binary', not {mode!r}.")

    async def receive(self) -> str | bytes:
        """The next message the app sent: ``str`` for text, ``bytes`` for binary."""
        message = await self._receive_message()
        text = message.get("text")
        if text is not None:
            return str(text)
        return bytes(message.get("bytes") or b"")

    async def _receive_message(self) -> Message:
        if self.close_code is not None:
            raise WebSocketClosed(self.path, self.close_code, self.close_reason)
        if self._closed_by_test:
            raise RuntimeError(f"The test already closed the websocket {self.path}.")
        try:
            message = await self._from_app.receive()
        except anyio.EndOfStream:
            await self._finished.wait()
            self._raise_app_error()
            self._record_close({"code": ABNORMAL_CLOSURE, "reason": "the app returned"})
            raise WebSocketClosed(self.path, ABNORMAL_CLOSURE, self.close_reason) from None
        if message["type"] == "websocket.close":
            self._record_close(message)
            raise WebSocketClosed(self.path, self.close_code or 1000, self.close_reason)
        if message["type"] != "websocket.send":
            raise RuntimeError(
                f"The app sent {message['type']!r} on the open websocket {self.path}; "
                "expected 'websocket.send' or 'websocket.close'."
            )
        return message

    async def receive_text(self) -> str:
        data = await self.receive()
        if not isinstance(data, str):
            raise TypeError(
                f"Expected a text message on {self.path}, but the app sent bytes: {data[:60]!r}"
            )
        return data

    async def receive_bytes(self) -> bytes:
        data = await self.receive()
        if not isinstance(data, bytes):
            raise TypeError(
                f"Expected a binary message on {self.path}, but the app sent text: {data[:60]!r}"
            )
        return data

    async def receive_json(self) -> Any:
        """The next message (text or binary) parsed as JSON."""
        return json.loads(await self.receive())


def _is_disconnect(exc: BaseException) -> bool:
    return isinstance(exc, (WebSocketDisconnect, ClientDisconnected))


def _session(
    app: ASGIApp,
    path: str,
    subprotocols: Sequence[str],
    headers: Mapping[str, str],
    close_timeout: float = CLOSE_TIMEOUT,
) -> WebSocketSession:
    # Header keywords use underscores where the names have dashes.
    named = {keyword.replace("_", "-"): value for keyword, value in headers.items()}
    scope = websocket_scope(path, named, subprotocols)
    return WebSocketSession(app, scope, close_timeout=close_timeout)


class WebSocketConnect(Protocol):
    """What the ``websocket_connect`` fixture returns."""

    def __call__(
        self, path: str, *, subprotocols: Sequence[str] = (), **headers: str
    ) -> WebSocketSession: ...


def websocket_connector(app: ASGIApp) -> WebSocketConnect:
    """``connect(path, **headers)`` opening websocket connections to ``app``."""

    def connect(path: str, *, subprotocols: Sequence[str] = (), **headers: str) -> WebSocketSession:
        return _session(app, path, subprotocols, headers)

    return connect
