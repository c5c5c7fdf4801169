"""The one connection the tests share: whatever a test does to it, the next test starts clean."""

from __future__ import annotations

import pytest
from conftest import Project

MODELS = """
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Thing(Base):
    __tablename__ = "things"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20), unique=True)
"""


@pytest.mark.usefixtures("db_driver")
def test_next_test_is_clean_whatever_the_previous_did(project: Project) -> None:
    project.ini(testkit_schema="things_models:Base.metadata")
    project.module("things_models", MODELS)
    project.module(
        "test_abuse",
        """
        import pytest
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        COUNT = text("SELECT count(*) FROM things")

        async def test_1_rolls_back_the_outer_transaction_then_writes_again(db_connection):
            await db_connection.execute(text("INSERT INTO things (name) VALUES ('a')"))
            await db_connection.rollback()
            await db_connection.execute(text("INSERT INTO things (name) VALUES ('b')"))
            assert (await db_connection.scalar(COUNT)) == 1

        async def test_2_clean(db_connection):
            assert (await db_connection.scalar(COUNT)) == 0

        async def test_3_leaves_an_aborted_transaction(db_connection):
            with pytest.raises(DBAPIError):
                await db_connection.execute(text("SELECT * FROM no_such_table"))

        async def test_4_clean_and_usable(db_session):
            assert (await db_session.scalar(COUNT)) == 0

        async def test_5_fails_midway(db_session):
            await db_session.execute(text("INSERT INTO things (name) VALUES ('c')"))
            raise AssertionError("the test failed")

        async def test_6_clean(db_session):
            assert (await db_session.scalar(COUNT)) == 0

        async def test_7_session_commits_and_rolls_back(db_session):
            await db_session.execute(text("INSERT INTO things (name) VALUES ('d')"))
            await db_session.commit()
            with pytest.raises(DBAPIError):
                await db_session.execute(text("INSERT INTO things (name) VALUES ('d')"))
            await db_session.rollback()
            assert (await db_session.scalar(COUNT)) == 1

        async def test_8_clean(db_connection):
            assert (await db_connection.scalar(COUNT)) == 0
        """,
    )
    result = project.run("-p", "no:randomly")
    result.assert_outcomes(passed=7, failed=1)
    result.stdout.fnmatch_lines(["*test_5_fails_midway*", "*AssertionError: the test failed*"])


def test_commit_on_the_connection_is_real_and_reported(project: Project) -> None:
    project.ini(testkit_schema="things_models:Base.metadata")
    project.module("things_models", MODELS)
    project.module(
        "test_commit",
        """
        from sqlalchemy import text

        async def test_1_commits(db_connection):
            await db_connection.execute(text("INSERT INTO things (name) VALUES ('kept')"))
            await db_connection.commit()

        async def test_2_still_works(db_connection):
            await db_connection.execute(text("INSERT INTO things (name) VALUES ('other')"))
        """,
    )
    result = project.run("-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*public.things (0 -> 1 rows)*"])
