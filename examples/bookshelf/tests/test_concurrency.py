"""Several requests in flight at once, from one test, with an anyio task group."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bookshelf.models import Author, Review
from tests.factories import add_author, add_book, count


async def test_five_concurrent_author_creations(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    names = [f"Concurrent Author {n}" for n in range(5)]
    statuses: dict[str, int] = {}

    async def create(name: str) -> None:
        response = await client.post("/authors", json={"name": name})
        statuses[name] = response.status_code

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(create, name)

    assert statuses == dict.fromkeys(names, 201)
    stored = await db_session.scalars(select(Author.name).order_by(Author.name))
    assert stored.all() == names


async def test_five_concurrent_reviews_of_one_book(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await add_author(db_session, "Popular Author")
    book = await add_book(db_session, author, "Bestseller", 400)
    book_id = book.id
    created: list[dict[str, Any]] = []

    async def review(rating: int) -> None:
        response = await client.post(f"/books/{book_id}/reviews", json={"rating": rating})
        assert response.status_code == 201, response.text
        created.append(response.json())

    async with anyio.create_task_group() as tg:
        for rating in (1, 2, 3, 4, 5):
            tg.start_soon(review, rating)

    assert sorted(r["rating"] for r in created) == [1, 2, 3, 4, 5]
    assert len({r["id"] for r in created}) == 5
    assert await count(db_session, Review) == 5
    detail = (await client.get(f"/books/{book_id}")).json()
    assert detail["average_rating"] == 3


async def test_concurrent_duplicate_names_give_exactly_one_201(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    statuses: list[int] = []

    async def create(name: str) -> None:
        statuses.append((await client.post("/authors", json={"name": name})).status_code)

    async with anyio.create_task_group() as tg:
        for name in ("Twin", "Twin", "Solo", "Twin", "Other"):
            tg.start_soon(create, name)

    assert sorted(statuses) == [201, 201, 201, 409, 409]
    assert await count(db_session, Author) == 3
