"""Streaming and websockets, with the same client and fixtures as the plain endpoints."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
from anyio_fastapi_testkit import WebSocketRejected
from sqlalchemy.ext.asyncio import AsyncSession

from bookshelf.models import Author, Book


async def add_books(db_session: AsyncSession, *titles: str) -> None:
    author = Author(name="Ursula K. Le Guin")
    db_session.add(author)
    await db_session.flush()
    for n, title in enumerate(titles):
        db_session.add(Book(title=title, author_id=author.id, isbn=f"978000000000{n}", year=1970))
    await db_session.flush()


async def test_endless_feed_yields_books_then_heartbeats(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    await add_books(db_session, "The Dispossessed", "The Lathe of Heaven")
    events: list[tuple[str, dict[str, str]]] = []
    with anyio.fail_after(5):
        async with client.stream("GET", "/books/feed") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((event, json.loads(line.removeprefix("data: "))))
                if len(events) == 4:
                    break  # leaving the block disconnects the endless stream
    assert events == [
        ("book", {"title": "The Dispossessed"}),
        ("book", {"title": "The Lathe of Heaven"}),
        ("heartbeat", {}),
        ("heartbeat", {}),
    ]


async def test_slow_feed_can_be_cut_by_a_timeout(client: httpx.AsyncClient) -> None:
    received: list[str] = []
    # The response starts after the feed's first query (on a cold run, after the database is
    # built): time only the reading.
    async with client.stream("GET", "/books/feed", params={"interval": 10}) as response:
        with pytest.raises(TimeoutError), anyio.fail_after(0.3):
            async for line in response.aiter_lines():
                if line:
                    received.append(line)
    assert received == ["event: heartbeat", "data: {}"]


async def test_reading_room_chat_round_trip(websocket_connect, db_session: AsyncSession) -> None:
    await add_books(db_session, "A Wizard of Earthsea")
    async with websocket_connect("/ws/reading-room", x_reader="ged") as ws:
        await ws.send_text("hello")
        assert await ws.receive_text() == "ged: hello"
        await ws.send_text("count")
        assert await ws.receive_json() == {"books": 1}


async def test_reading_room_rejects_anonymous_readers(websocket_connect) -> None:
    with pytest.raises(WebSocketRejected) as rejected:
        async with websocket_connect("/ws/reading-room"):
            pass
    assert rejected.value.code == 4401
