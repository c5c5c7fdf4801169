"""The websocket_connect fixture in real sub-sessions, on asyncio and trio."""

from __future__ import annotations

import pytest
from conftest import ITEMS_APP, Project, verdicts
from scaffolding import items_on_the_tests_transaction

WS_APP = """
import json

import anyio
from contextlib import asynccontextmanager
from fastapi import Depends, FastAPI, Header, WebSocket, WebSocketDisconnect, WebSocketException

seen = []  # what the app observed, for the tests to check


@asynccontextmanager
async def lifespan(app):
    yield {"greeting": "hello"}


app = FastAPI(lifespan=lifespan)


def current_user() -> str:
    return "real user"


def require_token(x_token: str | None = Header(default=None)) -> str:
    if x_token != "secret":
        raise WebSocketException(code=1008, reason="no token")
    return x_token


@app.websocket("/chat")
async def chat(websocket: WebSocket, user: str = Depends(current_user)):
    offered = websocket.scope["subprotocols"]
    await websocket.accept(subprotocol=offered[0] if offered else None)
    await websocket.send_json({
        "user": user,
        "room": websocket.query_params.get("room"),
        "agent": websocket.headers.get("user-agent-name"),
        "greeting": websocket.state.greeting,
    })
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                seen.append(("test closed", message["code"]))
                return
            text = message.get("text")
            if text == "bye":
                await websocket.close(code=4001, reason="see you")
                return
            if text is not None:
                await websocket.send_text(text.upper())
            else:
                await websocket.send_bytes(message["bytes"][::-1])
    finally:
        seen.append("chat ended")


@app.websocket("/json")
async def json_echo(websocket: WebSocket):
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = json.loads(message.get("text") or message["bytes"])
        await websocket.send_json({"received": data})


@app.websocket("/private")
async def private(websocket: WebSocket, token: str = Depends(require_token)):
    await websocket.accept()
    await websocket.send_text("welcome")


@app.websocket("/silent")
async def silent(websocket: WebSocket):
    await websocket.accept()
    try:
        await websocket.receive_text()
    except WebSocketDisconnect as disconnect:
        await anyio.sleep(0.01)  # cleaning up takes a moment: cancelling now would lose it
        seen.append(("silent saw the close", disconnect.code))


@app.websocket("/skips")
async def skips(websocket: WebSocket):
    import pytest

    pytest.skip("skipped by the app")


@app.websocket("/crash")
async def crash(websocket: WebSocket):
    await websocket.accept()
    await websocket.receive_text()
    raise ValueError("the app crashed")
"""


def ws_project(project: Project) -> None:
    project.ini(testkit_app="ws_app:app", testkit_backends="asyncio trio", filterwarnings="error")
    project.module("ws_app", WS_APP)


def on_both(module: str, *tests: str, outcome: str = "PASSED") -> dict[str, list[str]]:
    """The expected verdicts of async tests that run once per backend."""
    return {
        f"{module}::{test}[{backend}]": [outcome]
        for test in tests
        for backend in ("asyncio", "trio")
    }


def test_chat_round_trip_close_codes_rejections_errors_timeouts_and_overrides(
    project: Project,
) -> None:
    # One sub-session of the websocket app, two modules: the chat, and the edge cases.
    ws_project(project)
    project.module(
        "test_chat",
        """
        import anyio
        import pytest
        import ws_app
        from starlette.websockets import WebSocketDisconnect
        from anyio_fastapi_testkit._http.websocket import WebSocketClosed

        def app_tasks():
            # By name: the loop's own tasks come and go (trio's run_sync_soon task, the
            # cleanup of collected async generators), the app's are the connector's.
            return [t for t in anyio.get_running_tasks() if (t.name or "").startswith("ASGI web")]

        async def test_text_bytes_json_and_the_test_closing(websocket_connect):
            ws_app.seen.clear()
            assert app_tasks() == []
            async with websocket_connect(
                "/chat?room=blue", subprotocols=["v2", "v1"], user_agent_name="tests"
            ) as ws:
                assert ws.accepted_subprotocol == "v2"
                assert len(app_tasks()) == 1
                assert await ws.receive_json() == {
                    "user": "real user", "room": "blue", "agent": "tests", "greeting": "hello"
                }
                await ws.send_text("hello")
                assert await ws.receive_text() == "HELLO"
                await ws.send_bytes(b"abc")
                assert await ws.receive_bytes() == b"cba"
                await ws.close(code=4002)
                assert ws_app.seen == [("test closed", 4002), "chat ended"]
            assert app_tasks() == []

        async def test_json_both_ways(websocket_connect):
            async with websocket_connect("/json") as ws:
                await ws.send_json({"n": [1, 2]})
                assert await ws.receive_json() == {"received": {"n": [1, 2]}}
                await ws.send_json(["binary"], mode="binary")
                assert await ws.receive_json() == {"received": ["binary"]}

        async def test_the_app_closing_with_a_code(websocket_connect):
            async with websocket_connect("/chat") as ws:
                await ws.receive_json()
                await ws.send_text("bye")
                with pytest.raises(WebSocketClosed, match="code 4001") as closed:
                    await ws.receive_text()
                assert isinstance(closed.value, WebSocketDisconnect)
                assert (ws.close_code, ws.close_reason) == (4001, "see you")
                with pytest.raises(WebSocketClosed):
                    await ws.send_text("anyone?")

        async def test_leaving_the_block_closes_with_1000(websocket_connect):
            ws_app.seen.clear()
            async with websocket_connect("/chat") as ws:
                await ws.receive_json()
            assert ws_app.seen == [("test closed", 1000), "chat ended"]

        async def test_text_expected_but_bytes_sent(websocket_connect):
            async with websocket_connect("/chat") as ws:
                await ws.receive_json()
                await ws.send_bytes(b"xy")
                with pytest.raises(TypeError, match="the app sent bytes: b'yx'"):
                    await ws.receive_text()
        """,
    )
    project.module(
        "test_ws_edges",
        """
        import anyio
        import pytest
        import ws_app
        from anyio_fastapi_testkit._http.websocket import WebSocketRejected

        async def test_rejected_handshake_has_the_close_code(websocket_connect):
            with pytest.raises(WebSocketRejected, match="rejected .* /private") as rejected:
                async with websocket_connect("/private"):
                    pass
            assert (rejected.value.code, rejected.value.reason) == (1008, "no token")
            async with websocket_connect("/private", x_token="secret") as ws:
                assert await ws.receive_text() == "welcome"

        async def test_unknown_path_is_rejected(websocket_connect):
            with pytest.raises(WebSocketRejected):
                async with websocket_connect("/nowhere"):
                    pass

        async def test_the_app_exception_reaches_the_test(websocket_connect):
            with pytest.raises(ValueError, match="the app crashed"):
                async with websocket_connect("/crash") as ws:
                    await ws.send_text("go")
                    await ws.receive_text()

        async def test_a_timeout_fires_and_the_app_still_sees_the_close(websocket_connect):
            ws_app.seen.clear()
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.2):
                    async with websocket_connect("/silent") as ws:
                        await ws.receive_text()
            assert ws_app.seen == [("silent saw the close", 1000)]

        async def test_pytest_skip_in_the_app_skips_the_test(websocket_connect):
            async with websocket_connect("/skips"):
                pass

        async def test_dependency_override_applies(websocket_connect, dependency_overrides):
            dependency_overrides[ws_app.current_user] = lambda: "fake user"
            async with websocket_connect("/chat") as ws:
                assert (await ws.receive_json())["user"] == "fake user"
        """,
    )
    result = project.run("-p", "no:randomly", "-v")
    assert verdicts(result) == {
        **on_both(
            "test_chat.py",
            "test_text_bytes_json_and_the_test_closing",
            "test_json_both_ways",
            "test_the_app_closing_with_a_code",
            "test_leaving_the_block_closes_with_1000",
            "test_text_expected_but_bytes_sent",
        ),
        **on_both(
            "test_ws_edges.py",
            "test_rejected_handshake_has_the_close_code",
            "test_unknown_path_is_rejected",
            "test_the_app_exception_reaches_the_test",
            "test_a_timeout_fires_and_the_app_still_sees_the_close",
            "test_dependency_override_applies",
        ),
        **on_both(
            "test_ws_edges.py", "test_pytest_skip_in_the_app_skips_the_test", outcome="SKIPPED"
        ),
    }, result.stdout.str()


ITEMS_WS_APP = (
    ITEMS_APP
    + """

from fastapi import WebSocket


@app.websocket("/items/ws")
async def items_ws(websocket: WebSocket, session: AsyncSession = Depends(get_session)):
    await websocket.accept()
    session.add(Item(name=await websocket.receive_text()))
    await session.commit()
    await websocket.send_json(list(await session.scalars(select(Item.name).order_by(Item.name))))
    await websocket.close()
"""
)


def test_a_websocket_endpoint_uses_the_tests_transaction(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    items_on_the_tests_transaction(project, monkeypatch, app=ITEMS_WS_APP)
    project.module(
        "test_items_ws",
        """
        from sqlalchemy import select
        from items_app import Item

        async def test_a_shares_the_transaction(websocket_connect, db_session):
            db_session.add(Item(name="from-test"))
            await db_session.flush()
            async with websocket_connect("/items/ws") as ws:
                await ws.send_text("from-ws")
                assert await ws.receive_json() == ["from-test", "from-ws"]
            assert list(await db_session.scalars(select(Item.name).order_by(Item.name))) == [
                "from-test", "from-ws"
            ]

        async def test_b_sees_nothing(db_session):
            assert list(await db_session.scalars(select(Item.name))) == []
        """,
    )
    project.run("-p", "no:randomly").assert_outcomes(passed=2)
