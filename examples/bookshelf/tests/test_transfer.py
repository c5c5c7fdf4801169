"""The transfer endpoint: one SAVEPOINT per book, failed moves rolled back on their own."""

from __future__ import annotations

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bookshelf.models import Book
from tests.factories import add_author, add_book, api_author, api_book


async def _titles_by_author(session: AsyncSession, author_id: int) -> list[str]:
    rows = await session.scalars(
        select(Book.title).where(Book.author_id == author_id).order_by(Book.title)
    )
    return list(rows.all())


async def test_transfer_moves_every_book(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    pseudonym = await add_author(db_session, "Richard Bachman")
    king = await add_author(db_session, "Stephen King")
    rage = await add_book(db_session, pseudonym, "Rage", 300, 1977)
    road = await add_book(db_session, pseudonym, "Roadwork", 301, 1981)

    response = await client.post(
        f"/authors/{pseudonym.id}/transfer", json={"to_author_id": king.id}
    )

    assert response.status_code == 200
    assert response.json() == {"moved": [rage.id, road.id], "kept": []}
    assert await _titles_by_author(db_session, king.id) == ["Rage", "Roadwork"]
    assert await _titles_by_author(db_session, pseudonym.id) == []


async def test_transfer_rolls_back_only_the_conflicting_book(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    source = await api_author(client, "Ghostwriter")
    target = await api_author(client, "Famous Name")
    first = await api_book(client, source["id"], "Alpha", 310)
    clash = await api_book(client, source["id"], "Bravo", 311)
    last = await api_book(client, source["id"], "Charlie", 312)
    await api_book(client, target["id"], "Bravo", 313)  # the target already has a "Bravo"

    response = await client.post(
        f"/authors/{source['id']}/transfer", json={"to_author_id": target["id"]}
    )

    assert response.status_code == 200
    assert response.json() == {"moved": [first["id"], last["id"]], "kept": [clash["id"]]}
    # The successful moves were committed although a savepoint in between was rolled back.
    assert await _titles_by_author(db_session, target["id"]) == ["Alpha", "Bravo", "Charlie"]
    assert await _titles_by_author(db_session, source["id"]) == ["Bravo"]
    kept = (await client.get(f"/books/{clash['id']}")).json()
    assert kept["author_id"] == source["id"]


async def test_transfer_with_unknown_author_is_404(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await add_author(db_session, "Lonely Author")
    await add_book(db_session, author, "Only Book", 320)

    unknown_source = await client.post(
        f"/authors/{author.id + 500}/transfer", json={"to_author_id": author.id}
    )
    unknown_target = await client.post(
        f"/authors/{author.id}/transfer", json={"to_author_id": author.id + 500}
    )

    assert unknown_source.status_code == 404
    assert unknown_source.json() == {"detail": "author not found"}
    assert unknown_target.status_code == 404
    assert unknown_target.json() == {"detail": "target author not found"}
    assert await _titles_by_author(db_session, author.id) == ["Only Book"]


async def test_transfer_to_the_same_author_is_400(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await add_author(db_session, "Self Publisher")

    response = await client.post(f"/authors/{author.id}/transfer", json={"to_author_id": author.id})

    assert response.status_code == 400
    assert response.json() == {"detail": "cannot transfer books to the same author"}
