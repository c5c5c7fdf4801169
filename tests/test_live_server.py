"""live_server: the app on a real TCP socket, on the test's own loop, on both backends."""

from __future__ import annotations

import textwrap

from conftest import Project

LIVE_APP = """
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request

starts = []


@asynccontextmanager
async def lifespan(app):
    starts.append(1)
    yield {"greeting": "hello from the lifespan"}


app = FastAPI(lifespan=lifespan)


def who() -> str:
    return "real"


@app.get("/hello")
async def hello(request: Request, name: str = Depends(who)):
    return {"greeting": request.state.greeting, "who": name, "starts": len(starts)}
"""


def test_live_server_answers_a_real_http_request(project: Project) -> None:
    project.ini(testkit_app="live_app:app", testkit_backends="asyncio trio")
    project.module("live_app", LIVE_APP)
    project.module(
        "test_live",
        """
        import socket
        from urllib.parse import urlsplit

        import httpx

        import live_app

        async def test_real_socket(live_server, anyio_backend, dependency_overrides):
            parts = urlsplit(live_server)
            assert parts.hostname == "127.0.0.1" and parts.port
            dependency_overrides[live_app.who] = lambda: "overridden"
            # A plain client with real sockets, not the in-process transport.
            async with httpx.AsyncClient() as outside:
                response = await outside.get(f"{live_server}/hello")
            assert response.json() == {
                "greeting": "hello from the lifespan",
                "who": "overridden",
                "starts": 1 if anyio_backend == "asyncio" else 2,
            }

        async def test_same_server_for_the_backend(live_server, client):
            async with httpx.AsyncClient() as outside:
                assert (await outside.get(f"{live_server}/hello")).status_code == 200
        """,
    )
    project.run("-p", "no:randomly").assert_outcomes(passed=4)


def test_live_server_requests_share_the_tests_transaction(project: Project) -> None:
    from conftest import ITEMS_APP

    project.ini(
        testkit_app="items_app:app",
        testkit_schema="items_app:Base.metadata",
        testkit_session_dependency="items_app:get_session",
    )
    project.module("items_app", ITEMS_APP)
    project.module(
        "test_live_db",
        """
        import httpx
        from sqlalchemy import select

        from items_app import Item

        async def test_1_writes_through_the_socket(live_server, db_session):
            db_session.add(Item(name="from-test"))
            await db_session.flush()
            async with httpx.AsyncClient(base_url=live_server) as outside:
                assert (await outside.post("/items", json={"name": "from-app"})).status_code == 201
                assert (await outside.get("/items")).json() == ["from-app", "from-test"]
            assert set(await db_session.scalars(select(Item.name))) == {"from-app", "from-test"}

        async def test_2_nothing_survived(db_session):
            assert list(await db_session.scalars(select(Item.name))) == []
        """,
    )
    project.run("-p", "no:randomly").assert_outcomes(passed=2)


def test_a_test_ends_after_its_live_requests_closed_their_sessions(project: Project) -> None:
    # A live server's request ends its session dependency after the client has the
    # response: the test's end must wait for it, or its rollback races the request's
    # savepoint ("savepoint ... does not exist" in some runs).
    from conftest import ITEMS_APP

    project.ini(
        testkit_app="items_app:app",
        testkit_schema="items_app:Base.metadata",
        testkit_session_dependency="items_app:get_session",
        testkit_sessionmaker="items_app:SessionLocal",
    )
    project.module("items_app", ITEMS_APP)
    pair = """
        async def test_write_{n}(live_server):
            async with httpx.AsyncClient(base_url=live_server) as outside:
                assert (await outside.get("/items")).json() == []
                assert (await outside.post("/items", json={{"name": "a"}})).status_code == 201
                assert (await outside.get("/items")).json() == ["a"]

        async def test_read_{n}(live_server, db_session):
            async with httpx.AsyncClient(base_url=live_server) as outside:
                assert (await outside.get("/items")).json() == []
        """
    rounds = 8
    source = "import httpx\n" + "".join(textwrap.dedent(pair).format(n=n) for n in range(rounds))
    project.module("test_live_end", source)
    project.run("-p", "no:randomly").assert_outcomes(passed=2 * rounds)
