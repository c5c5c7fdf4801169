"""No false alarms: the kit's own fixtures, at the strictest settings, on both backends."""

from __future__ import annotations

from conftest import Project

BUSY_APP = """
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, WebSocket
from fastapi.responses import StreamingResponse

ticks = []


@asynccontextmanager
async def lifespan(app):
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)  # a background task of the app, for the whole session
        yield
        tg.cancel_scope.cancel()


async def ticker():
    while True:
        ticks.append(1)
        await anyio.sleep(0.01)


app = FastAPI(lifespan=lifespan)


@app.get("/hello")
async def hello():
    return {"ok": True}


@app.get("/events")
async def events():
    async def endless():
        n = 0
        while True:
            n += 1
            yield f"data: {n}\\n\\n"
            await anyio.sleep(0.005)

    return StreamingResponse(endless(), media_type="text/event-stream")


@app.websocket("/echo")
async def echo(ws: WebSocket):
    await ws.accept()
    while True:
        await ws.send_text(await ws.receive_text())
"""

BUSY_TESTS = """
import httpx
import pytest


async def test_client(client):
    for _ in range(5):
        assert (await client.get("/hello")).json() == {"ok": True}


async def test_endless_stream_left_early(client):
    async with client.stream("GET", "/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("data: 3"):
                break


async def test_stream_not_closed_by_the_test(client):
    response = await client.send(client.build_request("GET", "/events"), stream=True)
    assert response.status_code == 200  # left open: the client's teardown closes it


async def test_websocket(websocket_connect):
    async with websocket_connect("/echo") as ws:
        await ws.send_text("hi")
        assert await ws.receive_text() == "hi"


@pytest.fixture
def outside():
    # Built off the loop, in a sync fixture: a new SSL context loads the CA bundle, which
    # holds the thread 0.1 s or more on a loaded machine, and the blocked-loop check would
    # rightly report that at 0.1 s if it ran in the test.
    return httpx.AsyncClient(verify=False)


async def test_live_server(live_server, outside):
    async with outside:
        for _ in range(3):
            assert (await outside.get(f"{live_server}/hello")).status_code == 200


async def test_live_server_keep_alive_client_not_closed(live_server, outside):
    assert (await outside.get(f"{live_server}/hello")).status_code == 200
    await outside.aclose()
"""


def test_kit_fixtures_raise_no_diagnostic_at_the_strictest_settings(project: Project) -> None:
    project.ini(
        testkit_app="busy_app:app",
        testkit_backends="asyncio trio",
        testkit_leaked_tasks="fail",
        testkit_blocked_loop="0.1",
        testkit_timeout="30",
    )
    project.module("busy_app", BUSY_APP)
    project.module("test_busy", BUSY_TESTS)
    result = project.run("-p", "no:randomly", "-W", "error::anyio_fastapi_testkit.TestkitWarning")
    result.assert_outcomes(passed=12)
    assert "Warning" not in result.stdout.str()
