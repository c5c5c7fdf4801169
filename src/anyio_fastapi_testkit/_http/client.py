"""The HTTP client on the app (httpx or its maintained fork httpx2), and dependency overrides."""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypedDict

from anyio.abc import TaskGroup

from .._core.config import DEFAULT_BASE_URL
from .._core.errors import ConfigError
from .streaming import StreamingASGITransport, buffered_send, streaming_transport

if sys.version_info >= (3, 11):
    from typing import Unpack
elif TYPE_CHECKING:
    from typing_extensions import Unpack

BASE_URL = DEFAULT_BASE_URL
HTTP_LIBRARIES = ("httpx2", "httpx")


@functools.cache  # a failure is not cached: it is raised again on the next call
def http_library(preferred: str | None) -> ModuleType:
    """The httpx-compatible library to build clients with.

    Starlette 1.2+ prefers httpx2 (the maintained fork) and warns about httpx, so httpx2 wins
    when both are installed, unless the ``testkit_http_client`` setting says otherwise.
    """
    names = (preferred,) if preferred else HTTP_LIBRARIES
    for name in names:
        if name not in HTTP_LIBRARIES:
            raise ConfigError(
                f"testkit_http_client = {name!r} is not supported; set it to httpx2 or httpx."
            )
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ConfigError(
        f"testkit_http_client = {preferred!r} is not installed; `pip install {preferred}`, "
        "or unset testkit_http_client to use whichever of httpx2 and httpx is installed."
        if preferred
        else "Neither httpx2 nor httpx is installed; `pip install httpx2` (or httpx)."
    )


def make_client(
    library: ModuleType,
    app: Any,
    *,
    task_group: TaskGroup | Callable[[], TaskGroup | None] | None = None,
    **kwargs: Any,
) -> Any:
    """An AsyncClient of ``library`` (:func:`client_class`) sending requests in-process to
    ``app`` (no sockets); ``kwargs`` go to the client (``base_url`` defaults to the kit's).

    Plain requests run the app inline; ``client.stream(...)`` runs it in a task, in
    ``task_group`` when given (or in the group it returns, when it is a function), else in the
    group ``async with client:`` opens (see
    :class:`StreamingASGITransport`). With ``task_group`` the client needs no ``async with``:
    its owner awaits ``client.aclose()`` before leaving the group, which closes the responses
    left open and raises the first error of their app calls. To close those responses but
    keep the client, await ``client.streaming_transport.close_exchanges()``.
    """
    __tracebackhide__ = True
    # The kit's transport streams responses as the app sends them (httpx's ASGITransport
    # reads a response to its end first, so endless streams would hang the test).
    transport = streaming_transport(library, app, task_group=task_group)
    kwargs.setdefault("base_url", _parsed_base_url(library, BASE_URL))
    return client_class(library)(transport=transport, **kwargs)


class ClientOptions(TypedDict, total=False):
    """The client's own keyword arguments that :class:`ClientFactory` takes.

    Those of ``httpx.AsyncClient`` (and ``httpx2.AsyncClient``) that mean something for an
    in-process client; the transport is the kit's. Values of the library's own types (``URL``,
    ``Timeout``, ``Auth``, ``Cookies``...) are typed ``Any``, as they are httpx's or httpx2's.
    """

    base_url: Any  # str or the library's URL; default: testkit_base_url
    headers: Any
    cookies: Any
    params: Any
    auth: Any
    timeout: Any
    follow_redirects: bool
    max_redirects: int
    event_hooks: Mapping[str, list[Callable[..., Any]]]
    mounts: Mapping[str, Any]
    trust_env: bool
    default_encoding: str | Callable[[bytes], str]


class ClientFactory:
    """What the ``client_factory`` fixture gives: ``client_factory(**options)`` returns a new
    client on the started app, in the test's transaction, that the kit closes after the test.

    ``options`` are the client's own keyword arguments (:class:`ClientOptions`: ``headers``,
    ``cookies``, ``base_url``, ``follow_redirects``...); ``base_url`` defaults to
    ``testkit_base_url`` (``http://testserver``). Every call returns a new client, of the same
    library as the ``client`` fixture's (``httpx.AsyncClient`` or ``httpx2.AsyncClient``:
    annotate it as that), with cookies and headers of its own.
    """

    __slots__ = ("_app", "_base_url", "_library", "_on_close", "_task_group")

    def __init__(
        self,
        library: ModuleType,
        app: Any,
        *,
        base_url: str = BASE_URL,
        task_group: Callable[[], TaskGroup | None] | None = None,
        on_close: Callable[[Callable[[], Awaitable[None]]], None] | None = None,
    ) -> None:
        self._library = library
        self._app = app
        self._base_url = _parsed_base_url(library, base_url)
        self._task_group = task_group
        self._on_close = on_close

    def __call__(self, **options: Unpack[ClientOptions]) -> Any:
        """A new client on the app; ``options`` go to the client (see :class:`ClientOptions`)."""
        __tracebackhide__ = True
        kwargs: dict[str, Any] = dict(options)
        kwargs.setdefault("base_url", self._base_url)
        http_client = make_client(self._library, self._app, task_group=self._task_group, **kwargs)
        if self._on_close is not None:
            self._on_close(http_client.aclose)
        return http_client

    def __repr__(self) -> str:
        return f"<ClientFactory {self._library.__name__} base_url={str(self._base_url)!r}>"


@functools.cache
def client_class(library: ModuleType) -> type[Any]:
    """The kit's subclass of ``library.AsyncClient``, made once per library.

    Its ``send()`` tells its transport, a :class:`StreamingASGITransport`, whether the request
    is streamed: a buffered send (``stream=False``: ``get``, ``post``, ``request``...) runs
    the app inline, which costs a request less than a task does. ``streaming_transport`` is
    that transport (for ``close_exchanges()``).
    """
    base = library.AsyncClient

    def __init__(self: Any, *args: Any, transport: Any = None, **kwargs: Any) -> None:
        base.__init__(self, *args, transport=transport, **kwargs)
        # The transport as given, kept under a name of the kit's: httpx keeps it in a
        # private attribute.
        self._testkit_transport = transport

    async def send(self: Any, request: Any, *, stream: bool = False, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        # Around the whole send: the redirects and auth retries it follows are buffered too.
        # Only this client's own transport takes the mark (not a mounted one).
        token = buffered_send.set(None if stream else self._testkit_transport)
        try:
            return await base.send(self, request, stream=stream, **kwargs)
        finally:
            buffered_send.reset(token)

    def streaming_transport(self: Any) -> StreamingASGITransport:
        transport: StreamingASGITransport = self._testkit_transport
        return transport

    send.__doc__ = base.send.__doc__
    streaming_transport.__doc__ = "The client's StreamingASGITransport."
    namespace = {
        "__module__": __name__,
        "__doc__": f"{base.__doc__}\n\nThe kit's subclass: buffered sends run the app inline.",
        "__init__": __init__,
        "send": send,
        "streaming_transport": property(streaming_transport),
    }
    return type("AsyncClient", (base,), namespace)


@functools.cache
def _parsed_base_url(library: ModuleType, base_url: str) -> Any:
    # Parsing the base URL is most of what building a client costs; a parsed URL whose path
    # ends with "/" already is taken as it is (the client would otherwise copy it to add one).
    url = library.URL(base_url)
    if not url.raw_path.endswith(b"/"):
        url = url.copy_with(raw_path=url.raw_path + b"/")
    return url


def overridable(app: object) -> dict[Callable[..., Any], Callable[..., Any]]:
    __tracebackhide__ = True
    overrides = getattr(app, "dependency_overrides", None)
    if not isinstance(overrides, dict):
        raise TypeError(
            f"{type(app).__name__} has no dependency_overrides: dependency overrides need a "
            "FastAPI app (or a router-level app exposing dependency_overrides)."
        )
    return overrides


@contextmanager
def override_dependencies(
    app: object, overrides: Mapping[Callable[..., Any], Callable[..., Any]] | None = None
) -> Iterator[dict[Callable[..., Any], Callable[..., Any]]]:
    """Set ``app.dependency_overrides`` for a block and restore exactly what was there before.

    Yields the live overrides dict, so more overrides can be added inside the block; all of
    them are undone on exit, also when the block raises.
    """
    __tracebackhide__ = True
    live = overridable(app)
    saved = dict(live)
    live.update(overrides or {})
    try:
        yield live
    finally:
        live.clear()
        live.update(saved)
