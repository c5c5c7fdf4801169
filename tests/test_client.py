"""The client fixture (httpx and httpx2) and the dependency overrides helper."""

from __future__ import annotations

import importlib
import json
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import anyio
import pytest
from conftest import HTTP_LIBRARIES, PREFERRED_LIBRARY, Project, verdicts

from anyio_fastapi_testkit._http.client import client_class, make_client
from anyio_fastapi_testkit._http.streaming import streaming_transport

http_library = importlib.import_module(PREFERRED_LIBRARY)

COOKIE_APP = """
from fastapi import Depends, FastAPI, Request, Response

app = FastAPI()


def current_user() -> str:
    return "real user"


@app.post("/login")
async def login(response: Response):
    response.set_cookie("session", "abc")
    return {}


@app.get("/me")
async def me(request: Request, user: str = Depends(current_user)):
    return {"cookie": request.cookies.get("session"), "user": user}
"""


@pytest.mark.parametrize("library", HTTP_LIBRARIES)
def test_client_library_and_isolation(project: Project, library: str) -> None:
    project.ini(
        testkit_app="cookie_app:app", testkit_http_client=library, testkit_backends="asyncio trio"
    )
    project.module("cookie_app", COOKIE_APP)
    project.module(
        "test_cookies",
        f"""
        import {library}

        async def test_a_logs_in(client):
            assert isinstance(client, {library}.AsyncClient)
            assert str(client.base_url) == "http://testserver"
            await client.post("/login")
            assert (await client.get("/me")).json()["cookie"] == "abc"
            client.headers["x-leak"] = "yes"

        async def test_b_starts_clean(client):
            assert (await client.get("/me")).json()["cookie"] is None
            assert "x-leak" not in client.headers
        """,
    )
    project.run("-p", "no:randomly").assert_outcomes(passed=4)


def test_unknown_http_client_setting(project: Project) -> None:
    project.ini(testkit_app="cookie_app:app", testkit_http_client="requests")
    project.module("cookie_app", COOKIE_APP)
    project.module("test_any", "async def test_one(client):\n    pass\n")
    result = project.run()
    result.stdout.fnmatch_lines(["*testkit_http_client = 'requests' is not supported*"])


def test_default_library_overrides_restored_and_sync_tests(project: Project) -> None:
    # One sub-session for the cookie app with the default settings: three modules.
    project.ini(testkit_app="cookie_app:app")
    project.module("cookie_app", COOKIE_APP)
    project.module(
        "test_which",
        f"""
        import {PREFERRED_LIBRARY}

        async def test_which(client):
            # httpx2 is preferred where it is installed; httpx alone otherwise.
            assert isinstance(client, {PREFERRED_LIBRARY}.AsyncClient)
        """,
    )
    project.module(
        "test_overrides",
        """
        import cookie_app
        from anyio_fastapi_testkit import override_dependencies

        async def test_1_overrides_and_fails(client, dependency_overrides):
            dependency_overrides[cookie_app.current_user] = lambda: "fake user"
            assert (await client.get("/me")).json()["user"] == "fake user"
            raise AssertionError("boom")

        async def test_2_sees_the_real_dependency(client, app):
            assert app.dependency_overrides == {}
            assert (await client.get("/me")).json()["user"] == "real user"

        async def test_3_context_manager_restores_previous_state(client, app):
            app.dependency_overrides[cookie_app.current_user] = lambda: "outer"
            try:
                with override_dependencies(app, {cookie_app.current_user: lambda: "inner"}):
                    assert (await client.get("/me")).json()["user"] == "inner"
                assert (await client.get("/me")).json()["user"] == "outer"
            finally:
                app.dependency_overrides.clear()
        """,
    )
    # The kit's async fixtures depend on anyio_backend, so a sync test may request them.
    project.module(
        "test_sync",
        """
        def test_sync(client):
            assert str(client.base_url) == "http://testserver"
        """,
    )
    result = project.run("-p", "no:randomly", "-v")
    assert verdicts(result) == {
        "test_overrides.py::test_1_overrides_and_fails": ["FAILED"],
        "test_overrides.py::test_2_sees_the_real_dependency": ["PASSED"],
        "test_overrides.py::test_3_context_manager_restores_previous_state": ["PASSED"],
        "test_sync.py::test_sync": ["PASSED"],
        "test_which.py::test_which": ["PASSED"],
    }, result.stdout.str()
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: boom*"])


# --- the client on a task group someone else owns (direct tests, no sub-session) ----------

BACKENDS = ["asyncio", "trio"]
Message = dict[str, Any]


class RawApp:
    """A plain ASGI app (no framework in between): endless events, disconnects, failures."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        path = scope["path"]
        if path == "/raw-failure":
            raise LookupError("failed before the response started")
        if path == "/body-before-start":
            await send({"type": "http.response.body", "body": b"x"})
        if path == "/sleeps":
            try:
                await anyio.sleep(3600)
            finally:
                self.seen.append("sleep ended")
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if path == "/json":
            answer = {"body": body.decode(), "tasks": len(app_tasks())}
            await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
        elif path == "/events":
            n = 0
            try:
                while True:
                    chunk = f"data: event {n}\n\n".encode()
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    n += 1
                    await anyio.sleep(0.001)
            finally:
                self.seen.append("events closed")
        else:  # until the client goes away
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            self.seen.append(f"{path} disconnected")
            if path == "/fails-on-disconnect":
                raise KeyError("failed on disconnect")


def app_tasks() -> list[str]:
    names = [task.name or "" for task in anyio.get_running_tasks()]
    return [name for name in names if name.startswith("ASGI app")]


async def three_events(response: Any) -> list[str]:
    events: list[str] = []
    async with aclosing(response.aiter_lines()) as lines:
        async for line in lines:
            if line.startswith("data:"):
                events.append(line)
            if len(events) == 3:
                break
    return events


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_client_on_an_outside_task_group_needs_no_async_with(backend: str) -> None:
    app = RawApp()

    async def main() -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                client = make_client(http_library, app, task_group=task_group)
                assert isinstance(client, http_library.AsyncClient)
                response = await client.post("/json", content=b"hello")
                assert response.json() == {"body": "hello", "tasks": 0}  # inline, no task
                async with client.stream("GET", "/events") as streamed:
                    assert app_tasks() == ["ASGI app: GET /events"]
                    assert await three_events(streamed) == [
                        "data: event 0",
                        "data: event 1",
                        "data: event 2",
                    ]
                    assert app.seen == []
                assert app.seen == ["events closed"]
                assert app_tasks() == []
                await client.aclose()
                assert task_group.cancel_scope.cancel_called is False  # left alone

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_exchanges_ends_the_streams_nobody_closed(backend: str) -> None:
    app = RawApp()

    async def main() -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                client = make_client(http_library, app, task_group=task_group)
                for url in ("/events", "/until-disconnect"):  # started, never read or closed
                    await client.send(client.build_request("GET", url), stream=True)
                assert sorted(app_tasks()) == [
                    "ASGI app: GET /events",
                    "ASGI app: GET /until-disconnect",
                ]
                await client.streaming_transport.close_exchanges()
                assert sorted(app.seen) == ["/until-disconnect disconnected", "events closed"]
                assert app_tasks() == []
                # The client is still open, and the task group still serves it.
                async with client.stream("GET", "/events") as response:
                    assert len(await three_events(response)) == 3
                assert (await client.post("/json", content=b"again")).status_code == 200
                await client.aclose()

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_app_error_surfaces_from_closing_the_client_not_the_task_group(backend: str) -> None:
    app = RawApp()

    async def main() -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                for close in ("close_exchanges", "aclose"):
                    client = make_client(http_library, app, task_group=task_group)
                    for url in ("/fails-on-disconnect", "/until-disconnect"):
                        await client.send(client.build_request("GET", url), stream=True)
                    closing = (
                        client.streaming_transport.close_exchanges
                        if close == "close_exchanges"
                        else client.aclose
                    )
                    with pytest.raises(KeyError, match="failed on disconnect"):
                        await closing()
                    assert app_tasks() == []  # both ended, the failing one and the other
                    assert sorted(app.seen) == [
                        "/fails-on-disconnect disconnected",
                        "/until-disconnect disconnected",
                    ]
                    app.seen.clear()
                    await client.aclose()  # nothing left to close, nothing raised

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_with_on_an_outside_task_group_opens_none_and_closes_the_streams(
    backend: str,
) -> None:
    app = RawApp()

    async def main() -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                async with make_client(http_library, app, task_group=task_group) as client:
                    await client.send(client.build_request("GET", "/events"), stream=True)
                assert app.seen == ["events closed"]
                # The group is still open: the next test's client can use it.
                async with (
                    make_client(http_library, app, task_group=task_group) as client,
                    client.stream("GET", "/events") as response,
                ):
                    assert len(await three_events(response)) == 3

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_a_task_group_streams_need_async_with_but_buffered_sends_do_not(
    backend: str,
) -> None:
    app = RawApp()

    async def main() -> None:
        client = make_client(http_library, app)
        assert (await client.post("/json", content=b"x")).json() == {"body": "x", "tasks": 0}
        with pytest.raises(RuntimeError, match="StreamingASGITransport is not open"):
            async with client.stream("GET", "/events"):
                pass
        await client.aclose()
        with anyio.fail_after(10):
            async with (
                make_client(http_library, app) as client,
                client.stream("GET", "/events") as response,
            ):
                assert len(await three_events(response)) == 3

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_raw_app_failing_before_its_response_gives_an_empty_500_when_not_raising(
    backend: str,
) -> None:
    app = RawApp()

    async def main() -> None:
        def transport() -> Any:
            return streaming_transport(http_library, app, raise_app_exceptions=False)

        options = {"base_url": "http://testserver"}
        async with (
            client_class(http_library)(transport=transport(), **options) as inline,
            http_library.AsyncClient(transport=transport(), **options) as in_a_task,
        ):
            for url in ("/raw-failure", "/body-before-start"):
                for client in (inline, in_a_task):
                    response = await client.get(url)
                    assert (response.status_code, response.content) == (500, b""), url
                    assert response.headers.multi_items() == []

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cancelling_a_buffered_request_cancels_the_app_in_the_calling_task(backend: str) -> None:
    app = RawApp()

    async def main() -> None:
        client = make_client(http_library, app)
        with anyio.move_on_after(0.1) as scope:
            await client.get("/sleeps")
        assert scope.cancelled_caught
        assert app.seen == ["sleep ended"]
        assert (await client.post("/json", content=b"after")).json()["body"] == "after"
        await client.aclose()

    anyio.run(main, backend=backend)
