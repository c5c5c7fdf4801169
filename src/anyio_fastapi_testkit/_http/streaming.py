"""An ASGI transport for httpx/httpx2 that streams: responses return as soon as they start.

httpx's own ``ASGITransport`` runs the app to its end before it returns the response, so an
endless stream (server-sent events, a long ``StreamingResponse``) hangs the test
(encode/httpx#2186). This transport runs each streamed request's app call in a task of its own
and returns the response at ``http.response.start``; the body arrives chunk by chunk as the
app sends it.

Buffered requests run inline. A request sent without ``stream=True`` (``client.get``,
``client.post``...: httpx reads the whole body before it returns) needs none of that, so when
the kit's client (:func:`client_class`) marks a send as buffered, the app runs in the calling
task, as with httpx's ``ASGITransport``: no task, no events, the body collected in a list. It
runs in a copy of the caller's context all the same, as a task would: context variables the
app sets stay in its request, as with a server. The errors, the 500 of
``raise_app_exceptions=False`` and the checks of the app's messages are the streamed path's.

Where the tasks of streamed requests live. Either a task group the caller owns, passed as
``task_group`` (the transport never enters or exits it; its owner must close the exchanges,
``close_exchanges()`` or the client's ``aclose()``, before leaving it), or one the transport
opens itself in ``async with client:`` (httpx enters the transport with the client) and closes
with the client, in the same task, so cancel scopes nest correctly on asyncio and on trio. A
response cannot own a task group of its own: its ``aclose()`` may run in another task, or
after other cancel scopes were entered and left, and trio requires cancel scopes to be exited
in the task, and the order, in which they were entered. Each app task still ends with its
response: closing the response (or leaving ``client.stream(...)``) tells the app
``http.disconnect``, gives it ``disconnect_timeout`` seconds to return, cancels it and waits
for it. The app task never raises into the task group (that would cancel the test); its
exception is handed to the test instead: from the request before the response started, else
from reading the body or from closing the response.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextvars import ContextVar
from types import ModuleType, TracebackType
from typing import Any, cast

import anyio
from anyio.abc import TaskGroup

from .._diagnostics.timeouts import real_move_on_after
from .app import ASGIApp, Message, Scope

DISCONNECT_TIMEOUT = 1.0

# The transport whose request is being sent buffered (stream=False) by the kit's client, in
# the task sending it. Set around the whole send, so redirects and auth retries are covered.
buffered_send: ContextVar[object] = ContextVar("anyio_fastapi_testkit_buffered_send", default=None)


def _scope(request: Any, root_path: str, client: tuple[str, int]) -> Scope:
    """The ASGI HTTP scope of an httpx(2) request, with the fields httpx's ASGITransport sets."""
    url = request.url
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "headers": [(name.lower(), value) for name, value in request.headers.raw],
        "scheme": url.scheme,
        "path": url.path,
        "raw_path": url.raw_path.split(b"?")[0],
        "query_string": url.query,
        "server": (url.host, url.port),
        "client": client,
        "root_path": root_path,
    }


# How an app broke the ASGI protocol: the same errors on the inline and on the task path.
_PROTOCOL_ERRORS = {
    "start twice": "The app sent http.response.start twice for {what}.",
    "body before start": "The app sent http.response.body before http.response.start for {what}.",
    "body after last": (
        "The app sent http.response.body after the last one (more_body=False) for {what}."
    ),
    "no start": "The app returned without sending http.response.start for {what}.",
    "unfinished": (
        "The app returned without finishing the response body of {what} "
        "(it never sent http.response.body with more_body=False)."
    ),
}


def _protocol_error(problem: str, what: str) -> RuntimeError:
    return RuntimeError(_PROTOCOL_ERRORS[problem].format(what=what))


class _ResponseRecord:
    """What both kinds of exchange keep of the app's response, and the protocol checks they
    share, so that the inline path and the task path fail alike."""

    scope: Scope
    status: int | None
    headers: list[tuple[bytes, bytes]]
    complete: bool

    def describe(self) -> str:
        return f"{self.scope['method']} {self.scope['path']}"

    def _start(self, message: Message) -> None:
        __tracebackhide__ = True
        if self.status is not None:
            raise _protocol_error("start twice", self.describe())
        self.status = message["status"]
        self.headers = list(message.get("headers", []))

    def _check_body(self) -> None:
        __tracebackhide__ = True
        if self.status is None:
            raise _protocol_error("body before start", self.describe())
        if self.complete:
            raise _protocol_error("body after last", self.describe())


class _Exchange(_ResponseRecord):
    """One request to the app: runs the app call and relays its messages to the response."""

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        request_body: AsyncIterator[bytes],
        *,
        raise_app_exceptions: bool,
        disconnect_timeout: float,
    ) -> None:
        self._app = app
        self.scope = scope
        self._request_body = request_body
        self._request_complete = False
        self._raise_app_exceptions = raise_app_exceptions
        self._disconnect_timeout = disconnect_timeout
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self._keep_body = scope["method"] != "HEAD"
        # Zero buffer: the app runs only as far ahead of the reader as a socket would let it.
        self._body_in, self.body = anyio.create_memory_object_stream[bytes](0)
        self.started = anyio.Event()  # the response started, or the app returned without it
        self._disconnected = anyio.Event()  # from now on, receive() says http.disconnect
        self._finished = anyio.Event()
        # Shielded: only closing the response cancels the app, not a scope around the client.
        self._cancel_scope = anyio.CancelScope(shield=True)
        self.complete = False
        self.tail = b""  # the last chunk, read after the streamed ones
        self.closed = False
        self._error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    async def run(self) -> None:
        """Call the app (in the transport's task group); keep its exception for the test."""
        __tracebackhide__ = True
        try:
            with self._cancel_scope:
                try:
                    await self._app(self.scope, self._receive, self._send)
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:
                    # Also pytest.skip() and pytest.fail() from the app (or a dependency
                    # override): the test must see them as when the app ran in its own task.
                    self._error = exc
        finally:
            self._body_in.close()
            self.started.set()
            self._finished.set()

    async def _receive(self) -> Message:
        __tracebackhide__ = True
        if self._request_complete or self._disconnected.is_set():
            await self._disconnected.wait()
            return {"type": "http.disconnect"}
        try:
            chunk = await self._request_body.__anext__()
        except StopAsyncIteration:
            self._request_complete = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def _send(self, message: Message) -> None:
        __tracebackhide__ = True
        kind = message["type"]
        if kind == "http.response.start":
            self._start(message)
            self.started.set()
        elif kind == "http.response.body":
            await self._send_body(message)

    async def _send_body(self, message: Message) -> None:
        __tracebackhide__ = True
        self._check_body()
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if body and self._keep_body:
            if not more_body:
                # The last chunk is kept rather than handed over: the app may then return
                # without waiting for the reader, as it would after writing to a socket. For
                # the usual one-chunk response that saves the task switches of a hand-over.
                self.tail = bytes(body)
            else:
                # A closed response drops the chunk; receive() tells the app, as a server would.
                with contextlib.suppress(anyio.BrokenResourceError):
                    await self._body_in.send(bytes(body))
        if not more_body:
            self.complete = True
            self._body_in.close()
            self._disconnected.set()

    @property
    def failed(self) -> bool:
        return self._error is not None

    def take_error(self) -> BaseException | None:
        """The app's exception, once (None if it raised nothing, or it is not to be raised)."""
        error, self._error = self._error, None
        return error if self._raise_app_exceptions else None

    async def _wait_finished(self) -> None:
        # Event.wait() yields to the loop even when the event is set: most apps have returned
        # by the time their response is read, and each needless yield is a loop iteration.
        __tracebackhide__ = True
        if not self._finished.is_set():
            await self._finished.wait()

    async def end_of_body(self) -> None:
        """After the last chunk: wait for the app to return, then raise what went wrong."""
        __tracebackhide__ = True
        await self._wait_finished()
        error = self.take_error()
        if error is not None:
            raise error
        if not self.complete and self._raise_app_exceptions:
            raise _protocol_error("unfinished", self.describe())

    async def close(self) -> None:
        """Disconnect the app if it is still sending, wait for it to end, raise its error."""
        __tracebackhide__ = True
        if self.closed:
            return
        self._disconnect()
        try:
            if self.complete:
                # As with httpx's ASGITransport, the request ends when the app returns
                # (background tasks included).
                await self._wait_finished()
            else:
                # Shielded, so that a test leaving by cancellation (a timeout) still lets the
                # app see the disconnect and end its own way, as it would with a server.
                with real_move_on_after(self._disconnect_timeout, shield=True):
                    await self._finished.wait()
        finally:
            await self.abort()
        error = self.take_error()
        if error is not None:
            raise error

    async def abort(self) -> None:
        """Cancel the app call now and wait for it to end; its error stays for take_error()."""
        __tracebackhide__ = True
        self._disconnect()
        if self._finished.is_set():
            return
        with anyio.CancelScope(shield=True):
            self._cancel_scope.cancel()
            await self._finished.wait()

    def _disconnect(self) -> None:
        self.closed = True
        self.body.close()
        self._disconnected.set()


class _BufferedExchange(_ResponseRecord):
    """One buffered request, the app called inline: collects the response in plain fields."""

    __slots__ = (
        "_disconnected",
        "_keep_body",
        "_request_body",
        "_request_complete",
        "chunks",
        "complete",
        "headers",
        "scope",
        "status",
    )

    def __init__(self, scope: Scope, request_body: AsyncIterator[bytes]) -> None:
        self.scope = scope
        self._request_body = request_body
        self._request_complete = False
        self._keep_body = scope["method"] != "HEAD"
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.complete = False
        # Made only for an app that waits in receive() for the disconnect while it is still
        # sending (Starlette's StreamingResponse does, from a second task).
        self._disconnected: anyio.Event | None = None

    async def receive(self) -> Message:
        __tracebackhide__ = True
        if not self._request_complete and not self.complete:
            try:
                chunk = await self._request_body.__anext__()
            except StopAsyncIteration:
                self._request_complete = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": chunk, "more_body": True}
        if not self.complete:
            if self._disconnected is None:
                self._disconnected = anyio.Event()
            await self._disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        __tracebackhide__ = True
        kind = message["type"]
        if kind == "http.response.start":
            self._start(message)
        elif kind == "http.response.body":
            self._check_body()
            body = message.get("body", b"")
            if body and self._keep_body:
                self.chunks.append(bytes(body))
            if not message.get("more_body", False):
                self.complete = True
                if self._disconnected is not None:
                    self._disconnected.set()


class _InContext(Generator[Any, Any, Any]):
    """Awaiting it runs ``awaitable`` in the calling task, but in ``context``, not the task's.

    Every step runs in ``context.run``, the way a task steps its coroutine, so the context
    variables the awaitable sets stay in ``context``.
    """

    __slots__ = ("_awaitable", "_context", "_steps")

    def __init__(self, awaitable: Awaitable[Any], context: contextvars.Context) -> None:
        self._awaitable = awaitable
        self._steps = awaitable.__await__()
        self._context = context

    def __await__(self) -> Generator[Any, Any, Any]:
        return self

    def __next__(self) -> Any:
        __tracebackhide__ = True
        return self._context.run(self._steps.send, None)

    def send(self, value: Any) -> Any:
        __tracebackhide__ = True
        return self._context.run(self._steps.send, value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        # Python hands a delegated iterator the three-argument form; coroutines want the
        # exception alone since 3.12.
        __tracebackhide__ = True
        if isinstance(typ, BaseException):
            exc = typ
        elif isinstance(val, BaseException):
            exc = val
        else:
            exc = typ() if val is None else typ(val)
        if tb is not None:
            exc = exc.with_traceback(tb)
        return self._context.run(self._steps.throw, exc)

    def close(self) -> None:
        __tracebackhide__ = True
        self._context.run(self._steps.close)

    @property
    def gi_yieldfrom(self) -> Awaitable[Any]:
        """What is being awaited, for the await-stack walkers (the kit's timeout report)."""
        return self._awaitable


class AppResponseStream:
    """The body of a response, chunk by chunk as the app sends it; closing it ends the app call.

    Combined with the library's ``AsyncByteStream`` by :func:`streaming_transport_class`.
    """

    def __init__(self, exchange: _Exchange, on_close: Callable[[_Exchange], None]) -> None:
        self._exchange = exchange
        self._on_close = on_close

    def __aiter__(self) -> AppResponseStream:
        return self

    async def __anext__(self) -> bytes:
        __tracebackhide__ = True
        exchange = self._exchange
        try:
            return await exchange.body.receive()
        except anyio.EndOfStream:
            if exchange.tail and not exchange.closed:
                tail, exchange.tail = exchange.tail, b""
                return tail
            await exchange.end_of_body()
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        __tracebackhide__ = True
        try:
            await self._exchange.close()
        finally:
            self._on_close(self._exchange)


class BufferedBody:
    """The body of a buffered response, complete before the response is returned.

    Combined with the library's ``AsyncByteStream`` by :func:`streaming_transport_class`.
    """

    def __init__(self, chunks: list[bytes]) -> None:
        self._body = b"".join(chunks)

    def __aiter__(self) -> BufferedBody:
        return self

    async def __anext__(self) -> bytes:
        __tracebackhide__ = True
        body, self._body = self._body, b""
        if not body:
            raise StopAsyncIteration
        return body


class StreamingASGITransport:
    """Sends requests to an ASGI app in-process and returns responses as they start.

    Same arguments as httpx's ``ASGITransport``, plus ``disconnect_timeout``: how long the app
    gets to return after the client closed a response it was still sending, before its task is
    cancelled; and ``task_group``: where the app calls of streamed requests run (the group, or
    a function returning the group open at the time of the request). Use the class
    that :func:`streaming_transport_class` builds for the library (or
    :func:`streaming_transport`).

    Without ``task_group``, the transport opens a task group of its own in
    ``async with AsyncClient(transport=...)`` and streamed requests must be sent inside that
    block. With one, the transport uses it and never enters or exits it; the client then works
    without ``async with``, and the group's owner must call :meth:`close_exchanges` (or
    ``aclose()`` on the client) before leaving the group. Buffered sends of the kit's client
    (:func:`client_class`) run the app inline and need neither (see the module docstring).
    """

    # Set on the per-library subclasses.
    _stream_class: type[AppResponseStream] = AppResponseStream
    _buffered_class: type[BufferedBody] = BufferedBody
    _response_class: Any = None

    def __init__(
        self,
        app: ASGIApp,
        raise_app_exceptions: bool = True,
        root_path: str = "",
        client: tuple[str, int] = ("127.0.0.1", 123),
        disconnect_timeout: float = DISCONNECT_TIMEOUT,
        task_group: TaskGroup | Callable[[], TaskGroup | None] | None = None,
    ) -> None:
        if self._response_class is None:
            raise TypeError(
                "StreamingASGITransport needs the classes of an HTTP library: build it with "
                "streaming_transport(httpx2, app) or streaming_transport_class(httpx2)(app)."
            )
        self.app = app
        self.raise_app_exceptions = raise_app_exceptions
        self.root_path = root_path
        self.client = client
        self.disconnect_timeout = disconnect_timeout
        self._task_group: TaskGroup | None = None
        self._task_group_of: Callable[[], TaskGroup | None] | None = None
        if callable(task_group):
            self._task_group_of = task_group
        else:
            self._task_group = task_group
        self._owns_task_group = task_group is None
        self._exchanges: set[_Exchange] = set()

    async def __aenter__(self) -> StreamingASGITransport:
        __tracebackhide__ = True
        if not self._owns_task_group:
            return self
        if self._task_group is not None:
            raise RuntimeError("This StreamingASGITransport is already open.")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        __tracebackhide__ = True
        if not self._owns_task_group:
            await self.close_exchanges()
            return
        task_group, self._task_group = self._task_group, None
        if task_group is None:
            return
        try:
            await self.close_exchanges()
        finally:
            # Only a cancellation goes into the task group: any other exception would come
            # out of it wrapped in an ExceptionGroup instead of propagating as itself.
            cancelled = isinstance(exc_value, anyio.get_cancelled_exc_class())
            if cancelled:
                await task_group.__aexit__(exc_type, exc_value, traceback)
            else:
                await task_group.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Close the responses nobody closed, then the task group if it is the transport's."""
        __tracebackhide__ = True
        await self.__aexit__()

    async def close_exchanges(self) -> None:
        """Close the streamed responses nobody closed; raise the first app error among them.

        Each app still sending is told ``http.disconnect``, given ``disconnect_timeout``
        seconds to return, then cancelled; all of them have ended when this returns.
        """
        __tracebackhide__ = True
        first_error: BaseException | None = None
        for exchange in list(self._exchanges):
            try:
                await exchange.close()
            except BaseException as exc:  # every app task must end before the task group
                first_error = first_error or exc
        self._exchanges.clear()
        if first_error is not None:
            raise first_error

    def _open_task_group(self) -> TaskGroup:
        if self._task_group_of is not None:
            task_group = self._task_group_of()
            if task_group is None:
                raise RuntimeError(
                    "A streamed request was sent outside of the async test that owns the "
                    "client: the app calls of streamed responses run in a task group that is "
                    "open only while the test (or an async fixture of it) runs."
                )
            return task_group
        if self._task_group is None:
            raise RuntimeError(
                "The StreamingASGITransport is not open. It runs the app in a task group that "
                "`async with AsyncClient(transport=transport) as client:` opens and closes "
                "(or `async with transport:`); send requests inside that block."
            )
        return self._task_group

    async def handle_async_request(self, request: Any) -> Any:
        """Run the app: inline for a buffered send of the kit's client, else in a task,
        returning the response once the app starts it."""
        __tracebackhide__ = True
        if buffered_send.get() is self:
            return await self._handle_buffered(request)
        task_group = self._open_task_group()
        exchange = _Exchange(
            self.app,
            _scope(request, self.root_path, self.client),
            request.stream.__aiter__(),
            raise_app_exceptions=self.raise_app_exceptions,
            disconnect_timeout=self.disconnect_timeout,
        )
        self._exchanges.add(exchange)
        try:
            task_group.start_soon(exchange.run, name=f"ASGI app: {exchange.describe()}")
            await exchange.started.wait()
            if exchange.status is None:
                return await self._response_without_start(exchange)
        except BaseException:
            self._exchanges.discard(exchange)
            await exchange.abort()
            raise
        stream = self._stream_class(exchange, self._exchanges.discard)
        return self._response_class(exchange.status, headers=exchange.headers, stream=stream)

    async def _handle_buffered(self, request: Any) -> Any:
        """Call the app inline and return its complete response (as the task path would)."""
        __tracebackhide__ = True
        exchange = _BufferedExchange(
            _scope(request, self.root_path, self.client), request.stream.__aiter__()
        )
        context = contextvars.copy_context()
        # A client inside the app, on this transport, is not sending the caller's request.
        context.run(buffered_send.set, None)
        try:
            await _InContext(self.app(exchange.scope, exchange.receive, exchange.send), context)
        except BaseException as exc:
            # Also pytest.skip() and pytest.fail() from the app (or a dependency override);
            # a cancellation is the caller's own.
            if self.raise_app_exceptions or isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
            if exchange.status is None:
                return self._response_class(500, headers=[], content=b"")
        else:
            if exchange.status is None:
                raise _protocol_error("no start", exchange.describe())
            if not exchange.complete and self.raise_app_exceptions:
                raise _protocol_error("unfinished", exchange.describe())
        stream = self._buffered_class(exchange.chunks)
        return self._response_class(exchange.status, headers=exchange.headers, stream=stream)

    async def _response_without_start(self, exchange: _Exchange) -> Any:
        """The app returned before starting a response: its error, or a 500 when not raising."""
        __tracebackhide__ = True
        await exchange.abort()
        failed = exchange.failed
        error = exchange.take_error()
        if error is not None:
            raise error
        if not failed:
            raise _protocol_error("no start", exchange.describe())
        return self._response_class(500, headers=[], content=b"")


@functools.cache
def streaming_transport_class(library: ModuleType) -> type[StreamingASGITransport]:
    """The StreamingASGITransport for ``library`` (the module httpx or httpx2), made once.

    httpx and httpx2 each check that a response's stream is their own ``AsyncByteStream``, so
    each library gets subclasses on its own base classes.
    """
    stream_class = type(
        "AppResponseStream",
        (AppResponseStream, library.AsyncByteStream),
        {"__module__": __name__},
    )
    buffered_class = type(
        "BufferedBody",
        (BufferedBody, library.AsyncByteStream),
        {"__module__": __name__},
    )
    namespace = {
        "__module__": __name__,
        "_stream_class": stream_class,
        "_buffered_class": buffered_class,
        "_response_class": library.Response,
    }
    bases = (StreamingASGITransport, library.AsyncBaseTransport)
    return cast(type[StreamingASGITransport], type("StreamingASGITransport", bases, namespace))


def streaming_transport(library: ModuleType, app: ASGIApp, **kwargs: Any) -> StreamingASGITransport:
    """A StreamingASGITransport for ``library`` on ``app``; ``kwargs`` as for the class."""
    return streaming_transport_class(library)(app, **kwargs)
