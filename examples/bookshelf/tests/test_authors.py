"""Authors: creation, the duplicate-name rollback path, listing, and data shared with db_session."""

from __future__ import annotations

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bookshelf.models import Author
from tests.factories import add_author, api_author, count


async def test_each_test_starts_with_no_authors(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    # Isolation check: other tests create (and commit) authors; none may survive them.
    assert await count(db_session, Author) == 0
    assert (await client.get("/authors")).json() == []


async def test_create_author_commits_and_returns_201(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    response = await client.post("/authors", json={"name": "Ursula K. Le Guin"})

    assert response.status_code == 201
    created = response.json()
    assert created["name"] == "Ursula K. Le Guin"
    assert isinstance(created["id"], int)
    # What the app committed is visible to the test's session.
    stored = await db_session.scalar(select(Author).where(Author.id == created["id"]))
    assert stored is not None
    assert stored.name == "Ursula K. Le Guin"


async def test_duplicate_name_is_409_and_the_session_keeps_working(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    first = await api_author(client, "Octavia E. Butler")

    duplicate = await client.post("/authors", json={"name": "Octavia E. Butler"})
    assert duplicate.status_code == 409
    assert duplicate.json() == {"detail": "an author with this name already exists"}

    # After the handler's session.rollback(), the same test goes on using the database.
    second = await api_author(client, "Samuel R. Delany")
    names = [author["name"] for author in (await client.get("/authors")).json()]
    assert names == ["Octavia E. Butler", "Samuel R. Delany"]
    assert await count(db_session, Author) == 2
    db_session.add(Author(name="N. K. Jemisin"))
    await db_session.flush()
    assert await count(db_session, Author) == 3
    assert second["id"] != first["id"]


async def test_duplicate_of_an_author_committed_by_the_test(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await add_author(db_session, "Iain M. Banks")
    await db_session.commit()  # ends the test's savepoint, not the outer transaction

    response = await client.post("/authors", json={"name": "Iain M. Banks"})
    assert response.status_code == 409

    # The app's rollback undid only its own work (its request had a session of its own).
    await db_session.refresh(author)
    assert author.name == "Iain M. Banks"
    assert await count(db_session, Author) == 1


async def test_name_is_stripped_before_the_uniqueness_check(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    created = await api_author(client, "  Ted Chiang  ")
    assert created["name"] == "Ted Chiang"

    response = await client.post("/authors", json={"name": "Ted Chiang "})

    assert response.status_code == 409
    assert await db_session.scalar(select(Author.name)) == "Ted Chiang"


async def test_author_added_through_db_session_is_served_by_the_app(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    author = await add_author(db_session, "Becky Chambers")  # flushed, never committed

    listed = (await client.get("/authors")).json()
    fetched = await client.get(f"/authors/{author.id}")

    assert listed == [{"id": author.id, "name": "Becky Chambers"}]
    assert fetched.status_code == 200
    assert fetched.json() == {"id": author.id, "name": "Becky Chambers"}


async def test_list_authors_is_sorted_and_filterable(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    for name in ("Zadie Smith", "Bob Leckie", "Ann Leckie", "Martha Wells"):
        await api_author(client, name)

    everyone = [a["name"] for a in (await client.get("/authors")).json()]
    leckies = [a["name"] for a in (await client.get("/authors", params={"q": "LECKIE"})).json()]
    nobody = (await client.get("/authors", params={"q": "%"})).json()

    assert everyone == ["Ann Leckie", "Bob Leckie", "Martha Wells", "Zadie Smith"]
    assert leckies == ["Ann Leckie", "Bob Leckie"]
    assert nobody == []  # the LIKE wildcard is escaped


async def test_unknown_author_is_404(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    author = await add_author(db_session, "Gene Wolfe")

    response = await client.get(f"/authors/{author.id + 1000}")

    assert response.status_code == 404
    assert response.json() == {"detail": "author not found"}


async def test_commit_by_the_test_is_still_rolled_back_after_it(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    # Paired with the isolation check in test_books.py, which runs later and must not see it.
    db_session.add(Author(name="Committed By A Test"))
    await db_session.commit()

    names = [a["name"] for a in (await client.get("/authors")).json()]
    assert names == ["Committed By A Test"]
