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


SESSION_TESTS = """
import pytest
from sqlalchemy import event, select, text
from sqlalchemy.exc import IntegrityError

from things_models import Thing

STATEMENTS = []
COUNT = text("SELECT count(*) FROM things")


@pytest.fixture
def statements(db_connection):
    # What SQLAlchemy sends on the shared connection during the test (the kit's own
    # rollback goes through the driver and is not seen here).
    STATEMENTS.clear()
    listener = lambda conn, cursor, statement, *args: STATEMENTS.append(statement)
    event.listen(db_connection.sync_connection, "before_cursor_execute", listener)
    yield STATEMENTS
    event.remove(db_connection.sync_connection, "before_cursor_execute", listener)


async def test_01_commits_and_leaves_its_savepoint_open(db_session):
    db_session.add(Thing(name="a"))
    await db_session.commit()
    assert await db_session.scalar(COUNT) == 1  # begins the session's next savepoint
    db_session.info["mine"] = True
    db_session.autoflush = False


async def test_02_a_new_session_clean_and_reset(db_session, statements):
    assert db_session.info == {} and db_session.autoflush is True
    assert len(db_session.identity_map) == 0
    assert await db_session.scalar(COUNT) == 0
    db_session.add(Thing(name="a"))  # the same unique name: the first test's row is gone
    await db_session.commit()
    # A new session, in a savepoint of its own begun at its first statement.
    assert statements[0].startswith("SAVEPOINT"), statements


async def test_03_leaves_begin_nested_open(db_session):
    await db_session.begin_nested()
    db_session.add(Thing(name="b"))
    await db_session.flush()


async def test_04_clean(db_session):
    assert await db_session.scalar(COUNT) == 0
    assert not db_session.in_nested_transaction()


async def test_05_leaves_a_failed_flush(db_session):
    db_session.add_all([Thing(name="c"), Thing(name="c")])
    with pytest.raises(IntegrityError):
        await db_session.flush()


async def test_06_clean_and_usable(db_session):
    assert db_session.is_active
    assert await db_session.scalar(COUNT) == 0
    db_session.add(Thing(name="c"))
    await db_session.commit()


async def test_07_closes_its_session(db_session):
    db_session.add(Thing(name="d"))
    await db_session.commit()
    await db_session.close()


async def test_08_leaves_a_connection_savepoint_open(db_session, db_connection):
    await db_session.scalar(COUNT)
    await db_connection.begin_nested()
    await db_connection.execute(text("INSERT INTO things (name) VALUES ('e')"))


async def test_09_clean(db_session, db_connection):
    assert not db_connection.in_nested_transaction()  # the left-open savepoint is gone
    assert (await db_session.scalars(select(Thing.name))).all() == []


async def test_10_rolls_back_the_session(db_session):
    db_session.add(Thing(name="f"))
    await db_session.commit()
    await db_session.rollback()
    db_session.add(Thing(name="g"))
    await db_session.commit()


async def test_11_clean(db_session):
    assert await db_session.scalar(COUNT) == 0
"""


@pytest.mark.usefixtures("db_driver")
def test_each_tests_session_starts_clean(project: Project) -> None:
    project.ini(testkit_schema="things_models:Base.metadata", testkit_leak_check="fail")
    project.module("things_models", MODELS)
    project.module("test_session", SESSION_TESTS)
    project.run("-p", "no:randomly").assert_outcomes(passed=11)


def test_prepared_statements_outlive_the_tests_rollback(project: Project) -> None:
    # psycopg prepares a query from its fifth run on, and drops every prepared statement
    # when it sees a ROLLBACK: the kit's rollback between tests must not be seen by it.
    project.ini(testkit_schema="things_models:Base.metadata", testkit_database_driver="psycopg")
    project.module("things_models", MODELS)
    project.module(
        "test_prepared",
        """
        from sqlalchemy import select, text

        from things_models import Thing

        PREPARED = text("SELECT statement FROM pg_prepared_statements")

        async def test_1_runs_a_query_often(db_session):
            for _ in range(6):
                await db_session.scalars(select(Thing).where(Thing.name == "x"))

        async def test_2_it_is_still_prepared(db_connection):
            statements = (await db_connection.scalars(PREPARED)).all()
            assert any("FROM things" in statement for statement in statements), statements
        """,
    )
    project.run("-p", "no:randomly").assert_outcomes(passed=2)


@pytest.mark.usefixtures("db_driver")
def test_a_test_that_ends_the_servers_transaction_itself(project: Project) -> None:
    # The kit has no savepoint of its own for a test to break: whatever state a test leaves
    # the server's transaction in (ended behind SQLAlchemy's back, aborted), the kit rolls it
    # back and begins the next one in its end-of-test message.
    project.ini(testkit_schema="things_models:Base.metadata")
    project.module("things_models", MODELS)
    project.module(
        "test_break",
        """
        from sqlalchemy import text

        COUNT = text("SELECT count(*) FROM things")

        async def test_1_rolls_back_behind_sqlalchemys_back(db_connection):
            await db_connection.exec_driver_sql("ROLLBACK")

        async def test_2_starts_clean_and_writes(db_connection):
            assert await db_connection.scalar(COUNT) == 0
            await db_connection.execute(text("INSERT INTO things (name) VALUES ('x')"))
            await db_connection.exec_driver_sql("SELECT no_such_column FROM things")

        async def test_3_starts_clean(db_connection):
            assert await db_connection.scalar(COUNT) == 0
        """,
    )
    result = project.run("-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_2_starts_clean_and_writes*", "*no_such_column*"])
