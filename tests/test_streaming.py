"""Streaming responses through the client fixture: endless SSE, timeouts, chunks, errors;
and buffered requests, which run the app inline, answered as the streamed path answers them.

httpx's own ASGITransport reads the whole response before returning it (encode/httpx#2186),
so most tests here would hang or fail with it; each sub-session runs on asyncio and trio.
"""

from __future__ import annotations

import importlib.util

import pytest
from conftest import HTTP_LIBRARIES, PREFERRED_LIBRARY, Project, verdicts

# Warnings are errors in the sub-sessions, except trio's note about an async generator of
# httpx's that a test stopped iterating early (httpx's own generators, not the transport).
STRICT_WARNINGS = """
    error
    ignore:Async generator .* was garbage collected:ResourceWarning"""

STREAM_APP = '''
import anyio
from contextlib import asynccontextmanager
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import StreamingResponse

seen = []  # what the app observed, for the tests to check
gates = []  # anyio.Events a test creates to release the gated stream's chunks


@asynccontextmanager
async def lifespan(app):
    yield {"greeting": "hello"}


app = FastAPI(lifespan=lifespan)


@app.get("/events")
async def events():
    async def stream():
        n = 0
        try:
            while True:
                yield f"id: {n}\\ndata: event {n}\\n\\n"
                n += 1
                await anyio.sleep(0.01)
        finally:
            seen.append("events closed")

    return StreamingResponse(stream(), media_type="text/event-stream")


async def raw_stream(scope, receive, send):
    """A plain ASGI app: reads the request, sends one chunk, then reports what receive() says."""
    while (await receive()).get("more_body"):
        pass
    seen.append("http.request")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            await anyio.sleep(0.01)  # cleaning up takes a moment: cancelling now would lose it
        seen.append(message["type"])
        if message["type"] == "http.disconnect":
            return


async def raw_failure(scope, receive, send):
    raise LookupError("failed before the response started")


app.mount("/raw/stream", raw_stream)
app.mount("/raw/failure", raw_failure)


@app.get("/gated")
async def gated():
    async def stream():
        yield b"chunk 0"
        for n, gate in enumerate(gates, start=1):
            await gate.wait()
            yield f"chunk {n}".encode()

    return StreamingResponse(stream())


@app.get("/slow")
async def slow():
    async def stream():
        try:
            yield b"first"
            await anyio.sleep(3600)
            yield b"never"
        finally:
            seen.append("slow closed")

    return StreamingResponse(stream())


@app.get("/fails-before-start")
async def fails_before_start():
    raise ValueError("failed before the response started")


@app.get("/fails-mid-stream")
async def fails_mid_stream():
    async def stream():
        yield b"partial"
        raise KeyError("failed mid-stream")

    return StreamingResponse(stream())


@app.get("/skips")
async def skips():
    import pytest

    pytest.skip("skipped by the app")


@app.api_route("/echo/{item}", methods=["GET", "POST", "PUT", "HEAD"])
async def echo(item: str, request: Request):
    chunks = [len(chunk) async for chunk in request.stream() if chunk]
    return {
        "item": item,
        "method": request.method,
        "query": dict(request.query_params),
        "token": request.headers.get("x-token"),
        "chunks": chunks,
        "greeting": request.state.greeting,
    }


@app.post("/background")
async def background(tasks: BackgroundTasks):
    async def later():
        await anyio.sleep(0.05)
        seen.append("background done")

    tasks.add_task(later)
    return {"queued": True}
'''


# Starlette before 0.46 streams a StreamingResponse's body in a task group of its own and lets
# an error from the body out of it as an ExceptionGroup holding that one error; from 0.46 on
# it raises the error itself. The kit hands on what the app raised, so the sub-sessions expect
# whichever of the two the installed Starlette sends.
STREAM_ERRORS = """
import contextlib
import re
import sys

import pytest
import starlette

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

GROUPED = tuple(int(part) for part in starlette.__version__.split(".")[:2]) < (0, 46)


@contextlib.contextmanager
def raises_from_the_body(error, pattern):
    \"\"\"pytest.raises for an error raised by a StreamingResponse's body.\"\"\"
    if not GROUPED:
        with pytest.raises(error, match=pattern) as info:
            yield info
        return
    with pytest.raises(BaseExceptionGroup) as info:
        yield info
    (inner,) = info.value.exceptions
    assert type(inner) is error and re.search(pattern, str(inner)), info.value
"""


def stream_project(project: Project, library: str = PREFERRED_LIBRARY) -> None:
    project.ini(
        testkit_app="stream_app:app",
        testkit_backends="asyncio trio",
        testkit_http_client=library,
        filterwarnings=STRICT_WARNINGS,
    )
    project.module("stream_app", STREAM_APP)
    project.module("stream_errors", STREAM_ERRORS)


def on_both(*tests: str, outcome: str = "PASSED") -> dict[str, list[str]]:
    """The expected verdicts of async tests that run once per backend."""
    return {f"{test}[{backend}]": [outcome] for test in tests for backend in ("asyncio", "trio")}


def sse_tests(project: Project) -> dict[str, list[str]]:
    """An endless SSE stream read, then closed: the app sees the disconnect."""
    project.module(
        "test_sse",
        """
        from contextlib import aclosing

        import anyio
        import stream_app

        def app_tasks():
            # By name: the loop's own tasks come and go (trio's run_sync_soon task, the
            # cleanup of collected async generators), the app's are the transport's.
            return [t for t in anyio.get_running_tasks() if (t.name or "").startswith("ASGI app")]

        async def test_three_events_then_close(client):
            stream_app.seen.clear()
            assert app_tasks() == []
            with anyio.fail_after(5):
                async with client.stream("GET", "/events") as response:
                    assert response.headers["content-type"].startswith("text/event-stream")
                    assert len(app_tasks()) == 1  # the app's
                    events = []
                    async with aclosing(response.aiter_lines()) as lines:
                        async for line in lines:
                            if line.startswith("data:"):
                                events.append(line)
                            if len(events) == 3:
                                break
                    assert stream_app.seen == []  # still streaming
            assert events == ["data: event 0", "data: event 1", "data: event 2"]
            assert stream_app.seen == ["events closed"]  # the app's generator ended
            assert app_tasks() == []  # and its task is gone

        async def test_the_app_receives_http_disconnect(client):
            stream_app.seen.clear()
            with anyio.fail_after(5):
                async with client.stream("GET", "/raw/stream/") as response:
                    async with aclosing(response.aiter_raw()) as chunks:
                        assert await chunks.__anext__() == b"first"
            assert stream_app.seen == ["http.request", "http.disconnect"]

        async def test_aclose_also_disconnects(client):
            stream_app.seen.clear()
            request = client.build_request("GET", "/raw/stream/")
            response = await client.send(request, stream=True)
            await response.aclose()
            assert stream_app.seen == ["http.request", "http.disconnect"]
        """,
    )
    return on_both(
        "test_sse.py::test_three_events_then_close",
        "test_sse.py::test_the_app_receives_http_disconnect",
        "test_sse.py::test_aclose_also_disconnects",
    )


def sse_client_tests(project: Project) -> dict[str, list[str]]:
    """httpx-sse (on the kit's httpx client) and httpx2's own SSE read the endless stream."""
    project.module(
        "test_sse_clients",
        """
        from contextlib import aclosing

        import anyio
        import httpx
        import httpx2
        import stream_app
        from httpx_sse import aconnect_sse

        async def test_httpx_sse(client):
            stream_app.seen.clear()
            with anyio.fail_after(5):
                async with aconnect_sse(client, "GET", "/events") as source:
                    async with aclosing(source.aiter_sse()) as events:
                        received = [(await events.__anext__()).data for _ in range(3)]
            assert received == ["event 0", "event 1", "event 2"]
            assert stream_app.seen == ["events closed"]

        async def test_httpx2_sse(app_lifespan):
            from anyio_fastapi_testkit._http.streaming import streaming_transport

            stream_app.seen.clear()
            transport = streaming_transport(httpx2, app_lifespan)
            async with httpx2.AsyncClient(transport=transport, base_url="http://t") as client:
                with anyio.fail_after(5):
                    async with client.sse("/events") as source:
                        async with aclosing(source.__aiter__()) as events:
                            received = [(await events.__anext__()).id for _ in range(3)]
            assert received == ["0", "1", "2"]
            assert stream_app.seen == ["events closed"]
        """,
    )
    return on_both("test_sse_clients.py::test_httpx_sse", "test_sse_clients.py::test_httpx2_sse")


def behaviour_tests(project: Project) -> dict[str, list[str]]:
    """Timeouts, chunks one by one, and the app's errors."""
    project.module(
        "test_stream_behaviour",
        """
        from contextlib import aclosing

        import anyio
        import pytest
        import stream_app
        from stream_errors import raises_from_the_body

        async def test_a_timeout_fires_while_the_app_is_slow(client):
            stream_app.seen.clear()
            chunks = []
            started = anyio.current_time()
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.3):
                    async with client.stream("GET", "/slow") as response:
                        async for chunk in response.aiter_raw():
                            chunks.append(chunk)
            assert anyio.current_time() - started < 2
            assert chunks == [b"first"]
            assert stream_app.seen == ["slow closed"]

        async def test_a_timeout_still_lets_the_app_see_the_disconnect(client):
            stream_app.seen.clear()
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.3):
                    async with client.stream("GET", "/raw/stream/") as response:
                        async for chunk in response.aiter_raw():
                            pass
            assert stream_app.seen == ["http.request", "http.disconnect"]

        async def wait_for(received, count):
            while len(received) < count:
                await anyio.sleep(0.005)

        async def test_chunks_arrive_one_by_one(client):
            stream_app.gates[:] = [anyio.Event(), anyio.Event()]
            received = []

            async def read(response):
                async for chunk in response.aiter_raw():
                    received.append(chunk)

            with anyio.fail_after(5):
                async with client.stream("GET", "/gated") as response:
                    async with anyio.create_task_group() as task_group:
                        task_group.start_soon(read, response)
                        await wait_for(received, 1)
                        for n, gate in enumerate(stream_app.gates, start=1):
                            await anyio.sleep(0.05)
                            assert len(received) == n, f"chunk {n} came before its gate"
                            gate.set()
                            await wait_for(received, n + 1)
            assert received == [b"chunk 0", b"chunk 1", b"chunk 2"]

        async def test_an_exception_before_the_response_starts(client):
            with pytest.raises(LookupError, match="failed before the response started"):
                await client.get("/raw/failure/")
            with pytest.raises(LookupError, match="failed before the response started"):
                async with client.stream("GET", "/raw/failure/"):
                    pass
            # FastAPI sends its 500 response, then raises: the test sees the exception.
            with pytest.raises(ValueError, match="failed before the response started"):
                await client.get("/fails-before-start")

        async def test_pytest_skip_in_the_app_skips_the_test(client):
            await client.get("/skips")

        async def test_the_next_test_runs_normally(client):
            assert (await client.get("/echo/1")).status_code == 200

        async def test_an_exception_mid_stream(client):
            chunks = []
            async with client.stream("GET", "/fails-mid-stream") as response:
                assert response.status_code == 200
                with raises_from_the_body(KeyError, "failed mid-stream"):
                    async for chunk in response.aiter_raw():
                        chunks.append(chunk)
            assert chunks == [b"partial"]
        """,
    )
    name = "test_stream_behaviour.py::test_"
    return on_both(
        *(
            name + test
            for test in (
                "a_timeout_fires_while_the_app_is_slow",
                "a_timeout_still_lets_the_app_see_the_disconnect",
                "chunks_arrive_one_by_one",
                "an_exception_before_the_response_starts",
                "the_next_test_runs_normally",
                "an_exception_mid_stream",
            )
        )
    ) | on_both(name + "pytest_skip_in_the_app_skips_the_test", outcome="SKIPPED")


def plain_tests(project: Project, library: str) -> dict[str, list[str]]:
    """Plain requests are answered as by the library's ASGITransport."""
    project.module(
        "test_plain",
        f"""
        import {library} as library
        import stream_app
        from anyio_fastapi_testkit._http.streaming import StreamingASGITransport

        async def body():
            yield b"abc"
            yield b"defgh"

        REQUESTS = [
            ("GET", "/echo/1?q=x&q=y", {{}}),
            ("POST", "/echo/2", {{"json": {{"name": "n"}}, "headers": {{"x-token": "t"}}}}),
            ("PUT", "/echo/3", {{"content": b"raw bytes"}}),
            ("HEAD", "/echo/4", {{}}),
            ("GET", "/missing", {{}}),
            ("POST", "/echo/5", {{"data": {{"a": "1"}}}}),
        ]

        def summary(response):
            return response.status_code, response.headers.multi_items(), response.content

        async def test_uses_the_streaming_transport(client):
            assert isinstance(client._transport, StreamingASGITransport)
            assert isinstance(client._transport, library.AsyncBaseTransport)

        async def test_same_answers(client, app_lifespan):
            transport = library.ASGITransport(app=app_lifespan)
            async with library.AsyncClient(
                transport=transport, base_url="http://testserver"
            ) as reference:
                for method, url, options in REQUESTS:
                    expected = await reference.request(method, url, **options)
                    assert summary(await client.request(method, url, **options)) == summary(
                        expected
                    ), (method, url)
            response = await client.get("/echo/6")
            assert response.json()["greeting"] == "hello"  # the lifespan state

        async def test_request_body_is_streamed_to_the_app(client):
            response = await client.post("/echo/7", content=body())
            assert response.json()["chunks"] == [3, 5]

        async def test_background_tasks_finish_before_the_response_returns(client):
            stream_app.seen.clear()
            assert (await client.post("/background")).json() == {{"queued": True}}
            assert stream_app.seen == ["background done"]
        """,
    )
    return on_both(
        "test_plain.py::test_uses_the_streaming_transport",
        "test_plain.py::test_same_answers",
        "test_plain.py::test_request_body_is_streamed_to_the_app",
        "test_plain.py::test_background_tasks_finish_before_the_response_returns",
    )


def unopened_tests(project: Project) -> dict[str, list[str]]:
    """The kit's transport must be opened with the client."""
    project.module(
        "test_unopened",
        f"""
        import {PREFERRED_LIBRARY} as http
        import pytest
        from anyio_fastapi_testkit._http.streaming import streaming_transport

        async def test_unopened(app_lifespan):
            client = http.AsyncClient(transport=streaming_transport(http, app_lifespan))
            try:
                with pytest.raises(RuntimeError, match="StreamingASGITransport is not open"):
                    await client.get("http://testserver/echo/1")
            finally:
                await client.aclose()
        """,
    )
    return on_both("test_unopened.py::test_unopened")


HTTPX_SSE_INSTALLED = importlib.util.find_spec("httpx_sse") is not None


@pytest.mark.parametrize("library", HTTP_LIBRARIES)
def test_the_stream_app_on_each_http_library(project: Project, library: str) -> None:
    # One sub-session per library: with the preferred one (the kit's default) every test of
    # the stream app; with the other, plain requests and the SSE client libraries.
    stream_project(project, library=library)
    expected = plain_tests(project, library)
    if library == PREFERRED_LIBRARY:
        expected |= sse_tests(project) | behaviour_tests(project) | unopened_tests(project)
    elif HTTPX_SSE_INSTALLED:  # httpx beside httpx2
        expected |= sse_client_tests(project)
    result = project.run("-p", "no:randomly", "-v")
    assert verdicts(result) == expected, result.stdout.str()


# Routes for the inline path: redirects, context variables, several chunks, the app's tasks,
# and raw ASGI apps that break the protocol (or wait for the disconnect while sending).
INLINE_APP = """
import contextvars

import anyio
from fastapi import Depends, Request
from fastapi.responses import RedirectResponse, StreamingResponse

from stream_app import app, seen

request_var = contextvars.ContextVar("request_var", default=None)


@app.get("/tasks")
async def tasks():
    names = [task.name or "" for task in anyio.get_running_tasks()]
    return {
        "current": anyio.get_current_task().name,
        "app_tasks": sum(name.startswith("ASGI app") for name in names),
    }


@app.api_route("/redirect", methods=["GET", "POST"])
async def redirect():
    return RedirectResponse("/echo/redirected?from=redirect", status_code=307)


@app.get("/context")
async def context():
    before = request_var.get()
    request_var.set("set by the app")
    return {"before": before}


@app.get("/chunks")
async def chunks():
    async def stream():
        for n in range(3):
            yield f"chunk {n};".encode()
            await anyio.sleep(0)

    return StreamingResponse(stream(), headers={"x-chunks": "3"})


def current_user():
    return "real user"


@app.get("/user")
async def user(name: str = Depends(current_user)):
    return {"user": name}


def raw(path):
    def register(func):
        app.mount(f"/raw/{path}", func)
        return func

    return register


def start(status=200, headers=()):
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def body(data, more=False):
    return {"type": "http.response.body", "body": data, "more_body": more}


@raw("chunked")
async def chunked(scope, receive, send):
    await send(start(201, [(b"x-raw", b"1"), (b"x-raw", b"2")]))
    for data in (b"a", b"b", bytearray(b"c")):
        await send(body(data, more=True))
    await send(body(b""))
    seen.append((await receive())["type"])  # the response is complete: a disconnect


@raw("waits-for-disconnect")
async def waits_for_disconnect(scope, receive, send):
    while (await receive()).get("more_body"):
        pass

    async def listen():
        seen.append((await receive())["type"])

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(listen)
        await anyio.sleep(0.01)
        assert seen == []  # still sending: receive() waits
        await send(start())
        await send(body(b"a", more=True))
        await anyio.sleep(0.01)
        await send(body(b"b"))


@raw("start-twice")
async def start_twice(scope, receive, send):
    await send(start())
    await send(start(201))


@raw("body-before-start")
async def body_before_start(scope, receive, send):
    await send(body(b"x"))


@raw("body-after-last")
async def body_after_last(scope, receive, send):
    await send(start())
    await send(body(b"x"))
    await send(body(b"y"))


@raw("no-start")
async def no_start(scope, receive, send):
    pass


@raw("unfinished")
async def unfinished(scope, receive, send):
    await send(start())
    await send(body(b"part", more=True))
"""


def inline_project(project: Project, library: str = PREFERRED_LIBRARY) -> None:
    stream_project(project, library=library)
    project.ini(
        testkit_app="inline_app:app",
        testkit_backends="asyncio trio",
        testkit_http_client=library,
        filterwarnings=STRICT_WARNINGS,
    )
    project.module("inline_app", INLINE_APP)


# In the sub-sessions: the kit's client (buffered sends inline) beside a plain AsyncClient on
# the kit's transport (every send in a task, as before the inline path), both lenient or not.
INLINE_HELPERS = """
import builtins

import anyio
import pytest
import {library} as library
import inline_app
from anyio_fastapi_testkit._http.client import client_class
from anyio_fastapi_testkit._http.streaming import streaming_transport
from stream_errors import raises_from_the_body

BASE = "http://testserver"


def summary(response):
    history = [(r.status_code, r.headers.get("location")) for r in response.history]
    return response.status_code, response.headers.multi_items(), response.content, history


def inline_client(app, **options):
    transport = streaming_transport(library, app, **options)
    return client_class(library)(transport=transport, base_url=BASE)


def task_client(app, **options):
    transport = streaming_transport(library, app, **options)
    return library.AsyncClient(transport=transport, base_url=BASE)


async def streamed(client, method, url, **options):
    async with client.stream(method, url, **options) as response:
        await response.aread()
    return response
"""


def buffered_tests(project: Project, library: str) -> dict[str, list[str]]:
    """Buffered requests run inline, and are answered as in a task."""
    project.module(
        "test_inline",
        INLINE_HELPERS.format(library=library)
        + """

async def request_body():
    yield b"abc"
    yield b"defgh"


REQUESTS = [
    ("GET", "/echo/1?q=x&q=y", lambda: {}),
    ("POST", "/echo/2", lambda: {"json": {"name": "n"}, "headers": {"x-token": "t"}}),
    ("PUT", "/echo/3", lambda: {"content": b"raw bytes"}),
    ("POST", "/echo/4", lambda: {"content": request_body()}),
    ("HEAD", "/echo/5", lambda: {}),
    ("HEAD", "/raw/chunked/", lambda: {}),
    ("GET", "/missing", lambda: {}),
    ("POST", "/echo/6", lambda: {"data": {"a": "1"}}),
    ("GET", "/redirect", lambda: {"follow_redirects": True}),
    ("POST", "/redirect", lambda: {"follow_redirects": True, "content": request_body()}),
    ("GET", "/redirect", lambda: {}),
    ("GET", "/chunks", lambda: {}),
    ("GET", "/raw/chunked/", lambda: {}),
    ("POST", "/background", lambda: {}),
]


async def test_same_answers_inline_streamed_and_in_a_task(client, app_lifespan):
    async with task_client(app_lifespan) as in_a_task:
        for method, url, options in REQUESTS:
            expected = summary(await in_a_task.request(method, url, **options()))
            assert summary(await client.request(method, url, **options())) == expected, url
            assert summary(await streamed(client, method, url, **options())) == expected, url
    echoed = (await client.post("/echo/7", content=request_body())).json()
    assert echoed["chunks"] == [3, 5]  # the request body reached the app chunk by chunk
    assert echoed["greeting"] == "hello"  # the lifespan state
    assert (await client.head("/echo/8")).content == b""


async def test_a_buffered_request_runs_in_the_calling_task(client):
    answer = (await client.get("/tasks")).json()
    assert answer == {"current": anyio.get_current_task().name, "app_tasks": 0}
    response = await streamed(client, "GET", "/tasks")
    assert response.json()["app_tasks"] == 1  # a streamed one has its task
    assert response.json()["current"].startswith("ASGI app: GET /tasks")


async def test_receive_says_disconnect_once_the_response_is_complete(client):
    inline_app.seen.clear()
    response = await client.get("/raw/chunked/")
    assert (response.status_code, response.content) == (201, b"abc")
    assert inline_app.seen == ["http.disconnect"]
    inline_app.seen.clear()
    with anyio.fail_after(5):
        response = await client.post("/raw/waits-for-disconnect/", content=request_body())
    assert response.content == b"ab"
    assert inline_app.seen == ["http.disconnect"]


async def test_context_variables_the_app_sets_stay_in_its_request(client):
    for _ in range(2):
        assert (await client.get("/context")).json() == {"before": None}
    assert inline_app.request_var.get() is None
    token = inline_app.request_var.set("the test's")
    try:
        assert (await client.get("/context")).json() == {"before": "the test's"}
        assert inline_app.request_var.get() == "the test's"
    finally:
        inline_app.request_var.reset(token)
""",
    )
    return on_both(
        "test_inline.py::test_same_answers_inline_streamed_and_in_a_task",
        "test_inline.py::test_a_buffered_request_runs_in_the_calling_task",
        "test_inline.py::test_receive_says_disconnect_once_the_response_is_complete",
        "test_inline.py::test_context_variables_the_app_sets_stay_in_its_request",
    )


# Where the app fails, and how each path reports it: the exception, or with
# raise_app_exceptions=False the response the app got to send (a 500 before it started one).
APP_ERRORS = [
    (
        "/raw/failure/",
        "LookupError",
        "failed before the response started",
        (500, b"Internal Server Error"),  # FastAPI's outermost middleware sends it
    ),
    (
        "/fails-before-start",
        "ValueError",
        "failed before the response started",
        (500, b"Internal Server Error"),
    ),
    ("/fails-mid-stream", "KeyError", "failed mid-stream", (200, b"partial")),
    ("/raw/start-twice/", "RuntimeError", "sent http.response.start twice", (200, b"")),
    (
        "/raw/body-before-start/",
        "RuntimeError",
        "sent http.response.body before http.response.start",
        (500, b"Internal Server Error"),
    ),
    (
        "/raw/body-after-last/",
        "RuntimeError",
        "sent http.response.body after the last one .more_body=False.",
        (200, b"x"),
    ),
    (
        "/raw/unfinished/",
        "RuntimeError",
        "returned without finishing the response body of GET /raw/unfinished/",
        (200, b"part"),
    ),
]


def inline_error_tests(project: Project) -> dict[str, list[str]]:
    """App errors and protocol errors, inline as in a task."""
    project.module(
        "test_inline_errors",
        INLINE_HELPERS.format(library=PREFERRED_LIBRARY)
        + f"""

APP_ERRORS = {APP_ERRORS!r}
"""
        + """

def raises(name, pattern, url):
    if url == "/fails-mid-stream":
        return raises_from_the_body(getattr(builtins, name), pattern)
    return pytest.raises(getattr(builtins, name), match=pattern)


@pytest.mark.parametrize(("url", "error", "pattern", "lenient"), APP_ERRORS)
async def test_the_same_error(client, app_lifespan, url, error, pattern, lenient):
    with raises(error, pattern, url) as inline:
        await client.get(url)
    with raises(error, pattern, url) as as_streamed:
        await streamed(client, "GET", url)
    async with task_client(app_lifespan) as in_a_task:
        with raises(error, pattern, url) as in_task:
            await in_a_task.get(url)
    assert str(inline.value) == str(as_streamed.value) == str(in_task.value)
    assert inline.value.__traceback__ is not None


@pytest.mark.parametrize(("url", "error", "pattern", "lenient"), APP_ERRORS)
async def test_the_same_response_when_not_raising(app_lifespan, url, error, pattern, lenient):
    async with (
        inline_client(app_lifespan, raise_app_exceptions=False) as inline,
        task_client(app_lifespan, raise_app_exceptions=False) as in_a_task,
    ):
        response = await inline.get(url)
        assert (response.status_code, response.content) == lenient
        assert summary(response) == summary(await in_a_task.get(url))
        assert summary(response) == summary(await streamed(inline, "GET", url))


async def test_an_app_returning_without_a_response_start_always_raises(app_lifespan):
    pattern = "returned without sending http.response.start for GET /raw/no-start/"
    for raise_app_exceptions in (True, False):
        async with (
            inline_client(app_lifespan, raise_app_exceptions=raise_app_exceptions) as inline,
            task_client(app_lifespan, raise_app_exceptions=raise_app_exceptions) as in_a_task,
        ):
            for client in (inline, in_a_task):
                with pytest.raises(RuntimeError, match=pattern):
                    await client.get("/raw/no-start/")


async def test_pytest_skip_from_a_dependency_override(client, dependency_overrides):
    async def skipping():
        pytest.skip("skipped by the override")

    dependency_overrides[inline_app.current_user] = skipping
    await client.get("/user")


async def test_pytest_fail_from_a_dependency_override(client, dependency_overrides):
    def failing():  # a sync dependency: FastAPI runs it in a worker thread
        pytest.fail("failed by the override")

    dependency_overrides[inline_app.current_user] = failing
    await client.get("/user")


async def test_the_app_still_answers(client):
    assert (await client.get("/user")).json() == {"user": "real user"}
""",
    )
    name = "test_inline_errors.py::test_"
    return (
        {
            f"{name}{test}[{backend}-{url}-{error}-{pattern}-lenient{n}]": ["PASSED"]
            for test in ("the_same_error", "the_same_response_when_not_raising")
            for backend in ("asyncio", "trio")
            for n, (url, error, pattern, _) in enumerate(APP_ERRORS)
        }
        | on_both(
            name + "an_app_returning_without_a_response_start_always_raises",
            name + "the_app_still_answers",
        )
        | {
            **on_both(name + "pytest_skip_from_a_dependency_override", outcome="SKIPPED"),
            **on_both(name + "pytest_fail_from_a_dependency_override", outcome="FAILED"),
        }
    )


@pytest.mark.parametrize("library", HTTP_LIBRARIES)
def test_the_inline_app_on_each_http_library(project: Project, library: str) -> None:
    # One sub-session per library; the app's errors with the preferred one (the default).
    inline_project(project, library)
    expected = buffered_tests(project, library)
    if library == PREFERRED_LIBRARY:
        expected |= inline_error_tests(project)
    result = project.run("-p", "no:randomly", "-v")
    assert verdicts(result) == expected, result.stdout.str()
    if library == PREFERRED_LIBRARY:
        result.stdout.fnmatch_lines(["*Failed: failed by the override*"])
