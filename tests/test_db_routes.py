"""Writes that do not come through the session dependency: the app's own sessionmaker, and
data committed outside the test's transaction (reported, never silent)."""

from __future__ import annotations

import pytest
from conftest import Project

SERVICE_APP = """
import os

from fastapi import FastAPI
from sqlalchemy import String, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


# Built at import, as many apps do: testkit_database_env points it at the test database.
engine = create_async_engine(os.environ["DATABASE_URL"])
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)

app = FastAPI()


async def add_note(text):
    # A service that opens its own session, outside any FastAPI dependency.
    async with SessionLocal() as session:
        session.add(Note(text=text))
        await session.commit()


@app.post("/notes/{text}")
async def post_note(text: str):
    await add_note(text)
    return {"ok": True}


@app.get("/notes/count")
async def count_notes():
    async with SessionLocal() as session:
        return {"count": await session.scalar(select(func.count(Note.id)))}
"""

TESTS = """
from sqlalchemy import func, select

from service_app import Note, add_note


async def test_1_service_writes(client, db_session):
    assert (await client.post("/notes/hello")).status_code == 200
    await add_note("direct")
    assert await db_session.scalar(select(func.count(Note.id))) == 2
    assert (await client.get("/notes/count")).json() == {"count": 2}


async def test_2_nothing_survived(client, db_session):
    assert await db_session.scalar(select(func.count(Note.id))) == 0
"""


def _service_project(project: Project, **settings: str) -> None:
    project.ini(
        testkit_app="service_app:app",
        testkit_schema="service_app:Base.metadata",
        testkit_database_env="DATABASE_URL",
        **settings,
    )
    project.module("service_app", SERVICE_APP)
    project.module("test_service", TESTS)


@pytest.mark.usefixtures("db_driver")
def test_sessionmaker_hands_out_sessions_joined_to_the_test(project: Project) -> None:
    _service_project(project, testkit_sessionmaker="service_app:SessionLocal")
    project.run("-p", "no:randomly").assert_outcomes(passed=2)


def test_sessionmaker_on_trio_skips_with_reason(project: Project) -> None:
    _service_project(
        project, testkit_sessionmaker="service_app:SessionLocal", testkit_backends="asyncio trio"
    )
    project.module(
        "test_service",
        """
        from service_app import add_note

        async def test_service(client):
            await add_note("x")
        """,
    )
    result = project.run("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*runs on asyncio only*"])


@pytest.mark.usefixtures("db_driver")
def test_commit_outside_the_test_transaction_is_reported(project: Project) -> None:
    _service_project(project)  # no testkit_sessionmaker: the service commits for real
    result = project.run("-p", "no:randomly")
    result.stdout.fnmatch_lines(
        [
            "*Data was committed to the test database*outside the test's transaction*"
            "public.notes (0 -> 2 rows)*Likely routes: an engine the app builds at import "
            "time*testkit_sessionmaker*",
        ]
    )
    # The first test errors at teardown; the second sees the leaked rows and fails too.
    result.assert_outcomes(passed=1, errors=1, failed=1)


def test_leak_check_warn_mode(project: Project) -> None:
    _service_project(project, testkit_leak_check="warn")
    project.module(
        "test_service",
        """
        async def test_leaks(client):
            await client.post("/notes/hello")
        """,
    )
    result = project.run()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*LeakWarning: Data was committed*public.notes (0 -> 1 rows)*"])


def test_not_a_sessionmaker_is_a_clear_error(project: Project) -> None:
    _service_project(project, testkit_sessionmaker="service_app:engine")
    result = project.run()
    result.stdout.fnmatch_lines(["*testkit_sessionmaker = 'service_app:engine' is a AsyncEngine*"])


@pytest.mark.parametrize("value", ["sometimes"])
def test_bad_leak_check_value(project: Project, value: str) -> None:
    _service_project(project, testkit_leak_check=value)
    result = project.run()
    result.stderr.fnmatch_lines(
        ["*testkit_leak_check = 'sometimes' must be one of: fail, warn, off*"]
    )
