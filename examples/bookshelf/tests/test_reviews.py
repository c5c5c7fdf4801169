"""Reviews: adding them, the rating rule in pydantic and in the database."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bookshelf.models import Review
from tests.factories import add_author, add_book, add_review, api_review, count


async def test_add_review_returns_201_and_is_stored(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await add_author(db_session, "Mervyn Peake")
    book = await add_book(db_session, author, "Titus Groan", 200, 1946)

    response = await client.post(f"/books/{book.id}/reviews", json={"rating": 4, "text": "gothic"})

    assert response.status_code == 201
    body = response.json()
    assert body == {"id": body["id"], "book_id": book.id, "rating": 4, "text": "gothic"}
    stored = await db_session.scalar(select(Review).where(Review.id == body["id"]))
    assert stored is not None
    assert (stored.book_id, stored.rating) == (book.id, 4)


async def test_review_of_unknown_book_is_404(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    response = await client.post("/books/31337/reviews", json={"rating": 3})

    assert response.status_code == 404
    assert response.json() == {"detail": "book not found"}
    assert await count(db_session, Review) == 0


@pytest.mark.parametrize("rating", [0, 6, -1, "five"])
async def test_bad_rating_is_422_and_nothing_is_written(
    client: httpx.AsyncClient, db_session: AsyncSession, rating: object
) -> None:
    author = await add_author(db_session, "Lewis Carroll")
    book = await add_book(db_session, author, "Alice", 210, 1865)

    response = await client.post(f"/books/{book.id}/reviews", json={"rating": rating})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "rating"]
    assert await count(db_session, Review) == 0


async def test_reviews_added_through_db_session_show_up_in_the_book(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await add_author(db_session, "Susanna Clarke")
    book = await add_book(db_session, author, "Piranesi", 220, 2020)
    before = (await client.get(f"/books/{book.id}")).json()

    await add_review(db_session, book, 5, "the house is infinite")
    after = (await client.get(f"/books/{book.id}")).json()

    assert before["reviews"] == []
    assert before["average_rating"] is None
    assert [r["text"] for r in after["reviews"]] == ["the house is infinite"]
    assert after["average_rating"] == 5


async def test_database_rejects_a_rating_pydantic_would_have_caught(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await add_author(db_session, "Anonymous")
    book = await add_book(db_session, author, "Beowulf", 230)
    book_id = book.id

    with pytest.raises(IntegrityError, match="ck_reviews_rating_range"):
        async with db_session.begin_nested():
            db_session.add(Review(book_id=book_id, rating=9, text="too good"))

    # Only the savepoint was rolled back: the book is still there and takes valid reviews.
    await api_review(client, book_id, 5)
    listed = (await client.get(f"/books/{book_id}/reviews")).json()
    assert [r["rating"] for r in listed] == [5]


async def test_list_reviews_of_a_book(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    author = await add_author(db_session, "Hope Mirrlees")
    lud = await add_book(db_session, author, "Lud-in-the-Mist", 240, 1926)
    other = await add_book(db_session, author, "Madeleine", 241, 1919)
    await api_review(client, lud.id, 5, "fairy fruit")
    await api_review(client, other.id, 2)
    await api_review(client, lud.id, 4)

    response = await client.get(f"/books/{lud.id}/reviews")
    missing = await client.get(f"/books/{lud.id + other.id}/reviews")

    assert response.status_code == 200
    assert [(r["rating"], r["text"]) for r in response.json()] == [(5, "fairy fruit"), (4, "")]
    assert missing.status_code == 404
