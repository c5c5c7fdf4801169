"""Prices: a NUMERIC(10, 2) money column, and a price history that a service writes in a
session of its own (from the container's sessionmaker, which ``testkit_sessionmaker`` joins
to the test's transaction)."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bookshelf import services
from bookshelf.models import Book, PriceChange
from tests.factories import add_author, add_book, api_author, count, isbn


async def priced_book(session: AsyncSession, price: Decimal | str) -> Book:
    author = await add_author(session, "Iain M. Banks")
    book = await add_book(session, author, "Excession", 500, 1996)
    book.price = price  # type: ignore[assignment]  # a str, as a seed script might write it
    await session.flush()
    return book


async def test_prices_seeded_by_the_test_are_returned_as_the_database_stores_them(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await add_author(db_session, "Terry Pratchett")
    mort = Book(title="Mort", author_id=author.id, isbn=isbn(501), price="4.5")
    eric = Book(title="Eric", author_id=author.id, isbn=isbn(502), price=Decimal("4"))
    sourcery = Book(title="Sourcery", author_id=author.id, isbn=isbn(503), price="4.00")
    db_session.add_all([mort, eric, sourcery])
    await db_session.flush()

    listed = await client.get("/books", params={"author_id": author.id})
    detail = await client.get(f"/books/{eric.id}")

    # The app loaded the rows: NUMERIC(10, 2) gives Decimals with two places, whatever the
    # test's objects hold ("4.5", Decimal("4")).
    assert [(b["id"], b["price"]) for b in listed.json()] == [
        (mort.id, "4.50"),
        (eric.id, "4.00"),
        (sourcery.id, "4.00"),
    ]
    assert detail.json()["price"] == "4.00"
    assert (mort.price, eric.price) == ("4.5", Decimal("4"))  # the test's objects, untouched


async def test_create_book_with_a_price_rounds_to_cents(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await api_author(client, "Ann Leckie")

    response = await client.post(
        "/books",
        json={"title": "Ancillary Justice", "author_id": author["id"], "isbn": isbn(510)},
    )
    priced = await client.post(
        "/books",
        json={
            "title": "Ancillary Sword",
            "author_id": author["id"],
            "isbn": isbn(511),
            "price": "12.5",
        },
    )

    assert (response.status_code, response.json()["price"]) == (201, None)
    assert (priced.status_code, priced.json()["price"]) == (201, "12.50")
    stored = await db_session.scalar(select(Book.price).where(Book.id == priced.json()["id"]))
    assert stored == Decimal("12.50") and str(stored) == "12.50"


@pytest.mark.parametrize(
    ("price", "error"),
    [("-1", "greater_than_equal"), ("1.234", "decimal_max_places"), ("123456789.5", None)],
)
async def test_bad_price_is_422_and_nothing_is_written(
    client: httpx.AsyncClient, db_session: AsyncSession, price: str, error: str | None
) -> None:
    author = await add_author(db_session, "Nobody")

    response = await client.post(
        "/books", json={"title": "T", "author_id": author.id, "isbn": isbn(520), "price": price}
    )

    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "price"]
    if error is not None:
        assert detail["type"] == error
    assert await count(db_session, Book) == 0


async def test_price_change_is_recorded_by_the_service(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    book = await priced_book(db_session, Decimal("10"))

    response = await client.patch(f"/books/{book.id}", json={"price": "12.5"})

    assert response.status_code == 200
    assert response.json()["price"] == "12.50"
    # The service committed its row in a session of its own; the test sees it.
    changes = (await db_session.scalars(select(PriceChange))).all()
    assert [(c.book_id, c.old_price, c.new_price) for c in changes] == [
        (book.id, Decimal("10.00"), Decimal("12.50"))
    ]
    assert changes[0].changed_at is not None  # the server default
    history = (await client.get(f"/books/{book.id}/prices")).json()
    assert [(h["old_price"], h["new_price"]) for h in history] == [("10.00", "12.50")]


async def test_patch_that_keeps_the_price_records_nothing(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    book = await priced_book(db_session, "7.5")

    same = await client.patch(f"/books/{book.id}", json={"price": "7.50"})
    title = await client.patch(f"/books/{book.id}", json={"title": "Excession (2nd ed.)"})

    assert same.json()["price"] == title.json()["price"] == "7.50"
    assert await count(db_session, PriceChange) == 0
    assert (await client.get(f"/books/{book.id}/prices")).json() == []


async def test_history_of_unknown_book_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/books/424242/prices")

    assert response.status_code == 404
    assert response.json() == {"detail": "book not found"}


async def test_the_service_called_directly_writes_into_the_test(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    book = await priced_book(db_session, "3")

    await services.record_price_change(book.id, Decimal("3"), Decimal("2.99"))

    stored = await db_session.scalar(select(PriceChange.new_price))
    assert stored == Decimal("2.99")
    history = (await client.get(f"/books/{book.id}/prices")).json()
    assert [(h["old_price"], h["new_price"]) for h in history] == [("3.00", "2.99")]


async def test_history_rows_are_rolled_back_1_write(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    book = await priced_book(db_session, "1")
    await client.patch(f"/books/{book.id}", json={"price": "2"})
    await services.record_price_change(book.id, Decimal("2"), Decimal("3"))

    assert await count(db_session, PriceChange) == 2


async def test_history_rows_are_rolled_back_2_nothing_left(db_session: AsyncSession) -> None:
    assert await count(db_session, PriceChange) == 0
    assert await count(db_session, Book) == 0
