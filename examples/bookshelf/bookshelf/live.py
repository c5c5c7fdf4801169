"""Streaming endpoints: a server-sent event feed of new books, and a reading-room websocket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .container import container
from .models import Book

router = APIRouter()
SessionDep = Annotated[AsyncSession, Depends(container.session)]


@router.get("/books/feed")
async def book_feed(session: SessionDep, interval: float = 0.05) -> StreamingResponse:
    """Server-sent events: every book's title, then a heartbeat for ever (until the client goes)."""
    titles = list(await session.scalars(select(Book.title).order_by(Book.id)))

    async def events() -> AsyncIterator[str]:
        for title in titles:
            yield f"event: book\ndata: {json.dumps({'title': title})}\n\n"
        while True:
            yield "event: heartbeat\ndata: {}\n\n"
            await anyio.sleep(interval)

    return StreamingResponse(events(), media_type="text/event-stream")


@router.websocket("/ws/reading-room")
async def reading_room(websocket: WebSocket, session: SessionDep) -> None:
    """Echo chat that also answers "count" with the number of books."""
    if websocket.headers.get("x-reader") is None:
        await websocket.close(code=4401)
        return
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive_text()
            if message == "count":
                books = list(await session.scalars(select(Book.id)))
                await websocket.send_json({"books": len(books)})
            else:
                await websocket.send_text(f"{websocket.headers['x-reader']}: {message}")
    except WebSocketDisconnect:
        return
