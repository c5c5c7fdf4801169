"""Query counting (count_queries, assert_max_queries, assert_num_queries) in real sub-sessions.

The sub-sessions run a library app whose authors have books, with a real N+1 endpoint next
to an eager one, against the embedded server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Project, assert_nothing_left

LIBRARY_APP = """
import os

from fastapi import Depends, FastAPI
from sqlalchemy import ForeignKey, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    books: Mapped[list["Book"]] = relationship(back_populates="author", lazy="raise")


class Book(Base):
    __tablename__ = "books"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


async def get_session():
    raise RuntimeError("the tests override this dependency")
    yield


app = FastAPI(title="library")
_own_engine = None


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.get("/authors")
async def authors_one_query_per_author(session: AsyncSession = Depends(get_session)):
    authors = (await session.scalars(select(Author).order_by(Author.id))).all()
    result = []
    for author in authors:
        titles = await session.scalars(
            select(Book.title).where(Book.author_id == author.id).order_by(Book.title)
        )
        result.append({"name": author.name, "books": list(titles)})
    return result


@app.get("/authors/eager")
async def authors_eager(session: AsyncSession = Depends(get_session)):
    authors = await session.scalars(
        select(Author).options(selectinload(Author.books)).order_by(Author.id)
    )
    return [{"name": a.name, "books": sorted(b.title for b in a.books)} for a in authors]


@app.post("/authors")
async def add_author(body: dict, session: AsyncSession = Depends(get_session)):
    author = Author(name=body["name"])
    session.add(author)
    await session.commit()
    return {"id": author.id}


@app.get("/authors/count")
async def count_with_the_apps_own_engine():
    global _own_engine
    if _own_engine is None:
        _own_engine = create_async_engine(os.environ["DATABASE_URL"])
    async with _own_engine.connect() as connection:
        return {"count": await connection.scalar(select(func.count(Author.id)))}
"""

SEED = """
from library_app import Author, Book


async def seed(session, authors=3):
    session.add_all(
        Author(name=f"author {i}", books=[Book(title=f"book {i}a"), Book(title=f"book {i}b")])
        for i in range(authors)
    )
    await session.commit()
    session.expunge_all()
"""


def library_project(project: Project, **settings: str) -> Project:
    project.module("library_app", LIBRARY_APP)
    project.module("seed", SEED)
    project.ini(
        testkit_app="library_app:app",
        testkit_schema="library_app:Base.metadata",
        testkit_session_dependency="library_app:get_session",
        **settings,
    )
    return project


def test_the_limit_passes_under_it_and_fails_over_it_listing_the_statements(
    project: Project, private_tmpdir: Path
) -> None:
    # DATABASE_URL for the app's own engine (the kit then builds the database before collection).
    library_project(project, testkit_database_env="DATABASE_URL")
    project.module(
        "test_n_plus_one",
        """
        from sqlalchemy import select

        from library_app import Author, Book
        from seed import seed

        async def test_eager_endpoint_is_within_the_limit(client, db_session, assert_max_queries):
            await seed(db_session)
            with assert_max_queries(2) as queries:
                response = await client.get("/authors/eager")
            assert response.json()[0] == {"name": "author 0", "books": ["book 0a", "book 0b"]}
            assert len(queries) == 2  # the authors, then all their books in one SELECT ... IN

        async def test_exact_count_of_the_n_plus_one(client, db_session, assert_num_queries):
            await seed(db_session)
            async with assert_num_queries(4) as queries:
                assert len((await client.get("/authors")).json()) == 3
            assert [sql.split()[0] for sql in queries.statements] == ["SELECT"] * 4

        async def test_n_plus_one_breaks_the_limit(client, db_session, assert_max_queries):
            await seed(db_session)
            with assert_max_queries(2):
                await client.get("/authors")

        async def test_fewer_than_the_exact_number(db_session, assert_num_queries):
            with assert_num_queries(2):
                await db_session.execute(select(Author))

        async def test_the_apps_own_engine_is_counted(client, count_queries):
            with count_queries() as queries:
                assert (await client.get("/authors/count")).json() == {"count": 0}
            assert len(queries) == 1, queries.statements
            assert "count(authors.id)" in queries.statements[0]

        async def test_values_are_hidden(db_session, assert_max_queries):
            with assert_max_queries(0):
                await db_session.execute(select(Book).where(Book.title == "hunter2-secret"))

        async def test_values_are_shown_when_asked(db_session, assert_max_queries):
            with assert_max_queries(0, show_parameters=True):
                await db_session.execute(select(Book).where(Book.title == "visible-value"))
        """,
    )
    result = project.run("-v")
    result.stdout.fnmatch_lines(
        [
            "*test_n_plus_one.py::test_n_plus_one_breaks_the_limit: 4 SQL statements "
            "ran inside assert_max_queries(2), more than the 2 allowed:",
            "  1. SELECT authors.id, authors.name FROM authors ORDER BY authors.id",
            "  2. SELECT books.title FROM books WHERE books.author_id = %(author_id_1)s* ORDER BY*",
            "  3. SELECT books.title FROM books WHERE books.author_id = *",
            "  4. SELECT books.title FROM books WHERE books.author_id = *",
            "Fix: load related rows with the query (selectinload() / joinedload())*raise the "
            "limit: assert_max_queries(4).*Bound values are not shown*",
            "Not counted: SAVEPOINT*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*test_fewer_than_the_exact_number: 1 SQL statement ran inside "
            "assert_num_queries(2), fewer than the 2 expected:",
            "  1. SELECT authors.id, authors.name FROM authors",
            "*lower the number: assert_num_queries(1).*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*test_values_are_shown_when_asked: 1 SQL*",
            "*parameters: {*'visible-value'*}",
        ]
    )
    output = result.stdout.str()
    assert "hunter2-secret" not in output
    # pytest.fail(pytrace=False): the message alone, no traceback into the kit or the test.
    result.stdout.no_fnmatch_line("*_queries.py*")
    result.stdout.no_fnmatch_line("*await client.get*")
    result.assert_outcomes(passed=3, failed=4)
    assert_nothing_left(private_tmpdir)


# The kit's own statements (server start, schema, savepoints, commits) are not counted. The
# first test must be the run's first use of the database: this module runs first.
PLUMBING_TESTS = """
from library_app import Author

async def test_first_database_use_inside_the_block(client, count_queries):
    # Server start, schema build and the test's savepoint all happen in this block
    # (no testkit_database_env: nothing builds the database before the first test).
    with count_queries() as queries:
        assert (await client.get("/authors")).json() == []
    assert len(queries) == 1, queries.statements
    assert queries[0].sql.startswith("SELECT authors.id")

async def test_an_empty_block_counts_nothing(
    client, db_session, db_connection, db_session_sync, count_queries
):
    with count_queries() as queries:
        pass
    assert len(queries) == 0

async def test_commits_and_savepoints_are_not_counted(client, db_session, count_queries):
    async with count_queries() as queries:
        db_session.add(Author(name="a"))
        await db_session.commit()  # RELEASE SAVEPOINT, then a new SAVEPOINT
        async with db_session.begin_nested():
            db_session.add(Author(name="b"))
        assert (await client.post("/authors", json={"name": "c"})).status_code == 200
    assert [sql.split()[0] for sql in queries.statements] == ["INSERT"] * 3
"""

# Counting stops with the block, however the block ends, and at the latest at teardown.
REMOVAL_TESTS = """
import pytest
from sqlalchemy import text

kept = {}

async def test_statements_after_the_block_are_not_counted(db_session, count_queries):
    with count_queries() as queries:
        await db_session.execute(text("SELECT 1"))
    await db_session.execute(text("SELECT 2"))
    assert queries.statements == ["SELECT 1"]

async def test_a_block_that_raises_stops_counting(db_session, count_queries):
    with pytest.raises(ZeroDivisionError):
        with count_queries() as queries:
            await db_session.execute(text("SELECT 1"))
            1 / 0
    await db_session.execute(text("SELECT 2"))
    assert queries.statements == ["SELECT 1"]

async def test_a_limit_block_that_raises_is_not_checked(db_session, assert_max_queries):
    with pytest.raises(ValueError):
        with assert_max_queries(0) as queries:
            await db_session.execute(text("SELECT 1"))
            raise ValueError("the test's own error wins")
    assert len(queries) == 1

async def test_blocks_left_open_are_closed_at_teardown(
    db_session, count_queries, assert_max_queries
):
    kept["open"] = count_queries().start()
    kept["limit"] = assert_max_queries(5).start()
    await db_session.execute(text("SELECT 1"))

async def test_the_next_test_is_not_counted_by_them(db_session, db_session_sync):
    await db_session.execute(text("SELECT 2"))
    db_session_sync.execute(text("SELECT 3"))
    assert kept["open"].statements == ["SELECT 1"]
    assert kept["limit"].statements == ["SELECT 1"]
"""


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_the_kits_plumbing_is_not_counted_and_the_listener_is_removed_after_the_block(
    project: Project, private_tmpdir: Path, driver: str
) -> None:
    library_project(project, testkit_database_driver=driver)
    project.module("test_plumbing", PLUMBING_TESTS)  # before test_removal, in file order
    project.module("test_removal", REMOVAL_TESTS)
    result = project.run("-v")
    result.stdout.fnmatch_lines(
        [
            "*test_plumbing.py::test_first_database_use_inside_the_block PASSED*",
            "*test_plumbing.py::test_an_empty_block_counts_nothing PASSED*",
            "*test_plumbing.py::test_commits_and_savepoints_are_not_counted PASSED*",
            "*test_removal.py::test_statements_after_the_block_are_not_counted PASSED*",
            "*test_removal.py::test_a_block_that_raises_stops_counting PASSED*",
            "*test_removal.py::test_a_limit_block_that_raises_is_not_checked PASSED*",
            "*test_removal.py::test_blocks_left_open_are_closed_at_teardown PASSED*",
            "*test_removal.py::test_the_next_test_is_not_counted_by_them PASSED*",
        ]
    )
    result.assert_outcomes(passed=8)
    assert_nothing_left(private_tmpdir)


def test_on_trio_counting_works_and_only_async_database_tests_skip(
    project: Project, private_tmpdir: Path
) -> None:
    library_project(project, testkit_backends="asyncio trio")
    project.module(
        "test_trio",
        """
        from sqlalchemy import text

        async def test_counts_the_sync_session(count_queries, db_session_sync, anyio_backend):
            with count_queries() as queries:
                db_session_sync.execute(text("SELECT 1"))
                db_session_sync.commit()
            assert queries.statements == ["SELECT 1"]

        async def test_needs_no_database(count_queries, assert_max_queries, client):
            with count_queries() as queries, assert_max_queries(0):
                assert (await client.get("/health")).json() == {"status": "ok"}
            assert len(queries) == 0

        async def test_async_session(count_queries, db_session):
            async with count_queries() as queries:
                await db_session.execute(text("SELECT 1"))
            assert queries.statements == ["SELECT 1"]
        """,
    )
    result = project.run("-v", "-rs")
    result.stdout.fnmatch_lines_random(
        [
            "*test_counts_the_sync_session[[]asyncio[]] PASSED*",
            "*test_counts_the_sync_session[[]trio[]] PASSED*",
            "*test_needs_no_database[[]asyncio[]] PASSED*",
            "*test_needs_no_database[[]trio[]] PASSED*",
            "*test_async_session[[]asyncio[]] PASSED*",
            "*test_async_session[[]trio[]] SKIPPED*",
            "SKIPPED *test_trio.py*async driver (psycopg) runs on asyncio only*",
        ]
    )
    result.assert_outcomes(passed=5, skipped=1)
    assert_nothing_left(private_tmpdir)
