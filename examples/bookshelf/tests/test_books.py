"""Books: create, read, list with filters, update (commit + refresh) and delete."""

from __future__ import annotations

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bookshelf.models import Author, Book, PriceChange, Review
from tests.factories import add_author, add_book, add_review, api_author, api_book, count, isbn


async def test_each_test_starts_with_empty_tables(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    # Isolation check: test_authors.py commits rows (even through db_session) before this runs.
    assert await count(db_session, Author) == 0
    assert await count(db_session, Book) == 0
    assert await count(db_session, Review) == 0
    assert await count(db_session, PriceChange) == 0  # written by a service, not a request
    assert (await client.get("/stats")).json() == {"authors": 0, "books": 0, "reviews": 0}
    assert (
        await db_session.scalar(select(Author).where(Author.name == "Committed By A Test")) is None
    )


async def test_create_book_returns_201_and_is_stored(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await api_author(client, "Frank Herbert")

    response = await client.post(
        "/books",
        json={
            "title": "Dune",
            "author_id": author["id"],
            "isbn": "978-0-441-17271-9",
            "year": 1965,
        },
    )

    assert response.status_code == 201
    body = response.json()
    assert body == {
        "id": body["id"],
        "title": "Dune",
        "author_id": author["id"],
        "isbn": "9780441172719",  # hyphens removed
        "year": 1965,
        "price": None,
        "version": 1,  # server default, returned after the commit
    }
    stored = await db_session.scalar(select(Book).where(Book.isbn == "9780441172719"))
    assert stored is not None
    assert (stored.id, stored.title, stored.author_id) == (body["id"], "Dune", author["id"])


async def test_create_book_for_unknown_author_is_404(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    response = await client.post(
        "/books", json={"title": "Nobody's Book", "author_id": 424242, "isbn": isbn(1)}
    )

    assert response.status_code == 404
    assert response.json() == {"detail": "author not found"}
    assert await count(db_session, Book) == 0


async def test_duplicate_isbn_is_409_then_other_books_still_work(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await api_author(client, "Mary Shelley")
    await api_book(client, author["id"], "Frankenstein", 1, 1818)

    clash = await client.post(
        "/books", json={"title": "The Last Man", "author_id": author["id"], "isbn": isbn(1)}
    )
    assert clash.status_code == 409
    assert clash.json() == {"detail": "a book with this ISBN already exists"}

    await api_book(client, author["id"], "The Last Man", 2, 1826)
    titles = await db_session.scalars(select(Book.title).order_by(Book.id))
    assert titles.all() == ["Frankenstein", "The Last Man"]


async def test_same_title_is_409_for_one_author_but_fine_for_another(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    first = await api_author(client, "Stanislaw Lem")
    second = await api_author(client, "Andrei Tarkovsky")
    await api_book(client, first["id"], "Solaris", 10)

    clash = await client.post(
        "/books", json={"title": "Solaris", "author_id": first["id"], "isbn": isbn(11)}
    )
    other = await client.post(
        "/books", json={"title": "Solaris", "author_id": second["id"], "isbn": isbn(12)}
    )

    assert clash.status_code == 409
    assert clash.json() == {"detail": "this author already has a book with this title"}
    assert other.status_code == 201
    assert await count(db_session, Book) == 2


async def test_get_book_includes_reviews_and_average(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await add_author(db_session, "Jules Verne")
    book = await add_book(db_session, author, "Twenty Thousand Leagues", 20, 1870)
    await add_review(db_session, book, 5, "deep")
    await add_review(db_session, book, 2, "wet")

    response = await client.get(f"/books/{book.id}")

    assert response.status_code == 200
    body = response.json()
    assert body["title"] == "Twenty Thousand Leagues"
    assert [(r["rating"], r["text"]) for r in body["reviews"]] == [(5, "deep"), (2, "wet")]
    assert body["average_rating"] == 3.5


async def test_get_unknown_book_is_404(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    author = await add_author(db_session, "H. G. Wells")
    book = await add_book(db_session, author, "The Time Machine", 30)

    response = await client.get(f"/books/{book.id + 1}")

    assert response.status_code == 404
    assert response.json() == {"detail": "book not found"}


async def test_list_books_filters(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    clarke = await add_author(db_session, "Arthur C. Clarke")
    asimov = await add_author(db_session, "Isaac Asimov")
    await add_book(db_session, clarke, "Childhood's End", 40, 1953)
    await add_book(db_session, clarke, "Rendezvous with Rama", 41, 1973)
    await add_book(db_session, asimov, "Foundation", 42, 1951)
    await add_book(db_session, asimov, "The End of Eternity", 43, 1955)
    await add_book(db_session, asimov, "Untitled Draft", 44)

    async def titles(**params: int | str) -> list[str]:
        response = await client.get("/books", params=params)
        assert response.status_code == 200
        return [book["title"] for book in response.json()]

    assert len(await titles()) == 5
    assert await titles(author_id=clarke.id) == ["Childhood's End", "Rendezvous with Rama"]
    assert await titles(year_from=1952, year_to=1960) == ["Childhood's End", "The End of Eternity"]
    assert await titles(q="end") == [
        "Childhood's End",
        "Rendezvous with Rama",
        "The End of Eternity",
    ]
    assert await titles(author_id=asimov.id, q="END") == ["The End of Eternity"]
    assert await titles(author_id=asimov.id + clarke.id) == []


async def test_list_books_pages(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    author = await add_author(db_session, "Terry Pratchett")
    for n in range(1, 8):
        await add_book(db_session, author, f"Discworld {n}", 100 + n)

    first = (await client.get("/books", params={"limit": 3})).json()
    third = (await client.get("/books", params={"limit": 3, "offset": 6})).json()

    assert [b["title"] for b in first] == ["Discworld 1", "Discworld 2", "Discworld 3"]
    assert [b["title"] for b in third] == ["Discworld 7"]


async def test_update_book_commits_then_refreshes_the_version(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await api_author(client, "Philip K. Dick")
    book = await api_book(client, author["id"], "Do Androids Dream", 50, 1967)

    first = await client.patch(f"/books/{book['id']}", json={"title": "Do Androids Dream?"})
    second = await client.patch(f"/books/{book['id']}", json={"year": 1968})

    assert first.status_code == second.status_code == 200
    assert (first.json()["title"], first.json()["version"]) == ("Do Androids Dream?", 2)
    assert (second.json()["year"], second.json()["version"]) == (1968, 3)
    stored = await db_session.scalar(
        select(Book).where(Book.id == book["id"]).execution_options(populate_existing=True)
    )
    assert stored is not None
    assert (stored.title, stored.year, stored.version) == ("Do Androids Dream?", 1968, 3)


async def test_update_to_a_taken_title_is_409_and_changes_nothing(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await api_author(client, "Ray Bradbury")
    await api_book(client, author["id"], "Fahrenheit 451", 60, 1953)
    other = await api_book(client, author["id"], "The Martian Chronicles", 61, 1950)

    response = await client.patch(f"/books/{other['id']}", json={"title": "Fahrenheit 451"})

    assert response.status_code == 409
    fetched = (await client.get(f"/books/{other['id']}")).json()
    assert (fetched["title"], fetched["version"]) == ("The Martian Chronicles", 1)


async def test_update_unknown_book_is_404_and_null_title_is_422(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await add_author(db_session, "Kurt Vonnegut")
    book = await add_book(db_session, author, "Cat's Cradle", 70, 1963)

    missing = await client.patch(f"/books/{book.id + 1}", json={"year": 1999})
    null_title = await client.patch(f"/books/{book.id}", json={"title": None})

    assert missing.status_code == 404
    assert null_title.status_code == 422
    assert null_title.json()["detail"][0]["loc"] == ["body", "title"]


async def test_delete_book_removes_it_and_its_reviews(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await add_author(db_session, "Aldous Huxley")
    doomed = await add_book(db_session, author, "Brave New World", 80, 1932)
    kept = await add_book(db_session, author, "Island", 81, 1962)
    await add_review(db_session, doomed, 4)
    await add_review(db_session, doomed, 3)
    await add_review(db_session, kept, 5)
    doomed_id = doomed.id

    response = await client.delete(f"/books/{doomed_id}")

    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(f"/books/{doomed_id}")).status_code == 404
    assert await count(db_session, Book) == 1
    remaining = await db_session.scalars(select(Review.book_id))
    assert remaining.all() == [kept.id]


async def test_delete_unknown_book_is_404(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    response = await client.delete("/books/987654")

    assert response.status_code == 404
    assert response.json() == {"detail": "book not found"}
