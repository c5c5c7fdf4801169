"""Small helpers shared by the test modules: create rows through the API or the test session."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bookshelf.models import Author, Base, Book, Review


def isbn(n: int) -> str:
    """A distinct, valid-looking ISBN-13 per number."""
    return f"978{n:010d}"


async def api_author(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await client.post("/authors", json={"name": name})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def api_book(
    client: httpx.AsyncClient, author_id: int, title: str, n: int, year: int | None = None
) -> dict[str, Any]:
    response = await client.post(
        "/books", json={"title": title, "author_id": author_id, "isbn": isbn(n), "year": year}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def api_review(
    client: httpx.AsyncClient, book_id: int, rating: int, text: str = ""
) -> dict[str, Any]:
    response = await client.post(f"/books/{book_id}/reviews", json={"rating": rating, "text": text})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def add_author(session: AsyncSession, name: str) -> Author:
    """Insert through the test's session (flushed, not committed)."""
    author = Author(name=name)
    session.add(author)
    await session.flush()
    return author


async def add_book(
    session: AsyncSession, author: Author, title: str, n: int, year: int | None = None
) -> Book:
    book = Book(title=title, author_id=author.id, isbn=isbn(n), year=year)
    session.add(book)
    await session.flush()
    return book


async def add_review(session: AsyncSession, book: Book, rating: int, text: str = "") -> Review:
    review = Review(book_id=book.id, rating=rating, text=text)
    session.add(review)
    await session.flush()
    return review


async def count(session: AsyncSession, model: type[Base]) -> int:
    """Rows in the model's table, asked of the database (not the session's identity map)."""
    return await session.scalar(select(func.count()).select_from(model)) or 0
