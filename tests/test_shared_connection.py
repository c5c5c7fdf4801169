"""The one connection the tests share: whatever a test does to it, the next test starts clean."""

from __future__ import annotations

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


# Whatever a test leaves of the connection, the next test starts clean.
ABUSE_TESTS = """
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
"""

# A commit on the connection itself is real: the kit reports it (the row stays, so this
# module runs last).
COMMIT_TESTS = """
from sqlalchemy import text

async def test_1_commits(db_connection):
    await db_connection.execute(text("INSERT INTO things (name) VALUES ('kept')"))
    await db_connection.commit()

async def test_2_still_works(db_connection):
    await db_connection.execute(text("INSERT INTO things (name) VALUES ('other')"))
"""

# The test's session is new and reset in each test, whatever the previous one did to it.
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

# psycopg prepares a query from its fifth run on, and drops every prepared statement when it
# sees a ROLLBACK: the kit's rollback between tests must not be seen by it.
PREPARED_TESTS = """
from sqlalchemy import select, text

from things_models import Thing

PREPARED = text("SELECT statement FROM pg_prepared_statements")

async def test_1_runs_a_query_often(db_session):
    for _ in range(6):
        await db_session.scalars(select(Thing).where(Thing.name == "x"))

async def test_2_it_is_still_prepared(db_connection):
    statements = (await db_connection.scalars(PREPARED)).all()
    assert any("FROM things" in statement for statement in statements), statements
"""

# The kit has no savepoint of its own for a test to break: whatever state a test leaves the
# server's transaction in (ended behind SQLAlchemy's back, aborted), the kit rolls it back and
# begins the next one in its end-of-test message.
BREAK_TESTS = """
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
"""

# Each module's tests and their outcomes, in the order the modules run.
SHARED_CONNECTION_MODULES: dict[str, tuple[str, dict[str, str]]] = {
    "test_a_prepared": (
        PREPARED_TESTS,
        {"test_1_runs_a_query_often": "PASSED", "test_2_it_is_still_prepared": "PASSED"},
    ),
    "test_b_abuse": (
        ABUSE_TESTS,
        {
            "test_1_rolls_back_the_outer_transaction_then_writes_again": "PASSED",
            "test_2_clean": "PASSED",
            "test_3_leaves_an_aborted_transaction": "PASSED",
            "test_4_clean_and_usable": "PASSED",
            "test_5_fails_midway": "FAILED",
            "test_6_clean": "PASSED",
            "test_7_session_commits_and_rolls_back": "PASSED",
            "test_8_clean": "PASSED",
        },
    ),
    "test_c_session": (
        SESSION_TESTS,
        {
            name: "PASSED"
            for name in (
                "test_01_commits_and_leaves_its_savepoint_open",
                "test_02_a_new_session_clean_and_reset",
                "test_03_leaves_begin_nested_open",
                "test_04_clean",
                "test_05_leaves_a_failed_flush",
                "test_06_clean_and_usable",
                "test_07_closes_its_session",
                "test_08_leaves_a_connection_savepoint_open",
                "test_09_clean",
                "test_10_rolls_back_the_session",
                "test_11_clean",
            )
        },
    ),
    "test_d_break": (
        BREAK_TESTS,
        {
            "test_1_rolls_back_behind_sqlalchemys_back": "PASSED",
            "test_2_starts_clean_and_writes": "FAILED",
            "test_3_starts_clean": "PASSED",
        },
    ),
    # The commit's row stays in the table: last, so that no other module sees it.
    "test_e_commit": (
        COMMIT_TESTS,
        {"test_1_commits": "PASSED", "test_2_still_works": "PASSED"},
    ),
}


def test_next_test_is_clean_whatever_the_previous_did(project: Project, db_driver: str) -> None:
    """Every way of leaving the shared connection behind, in one sub-session per driver."""
    project.ini(testkit_schema="things_models:Base.metadata", testkit_leak_check="fail")
    project.module("things_models", MODELS)
    modules = dict(SHARED_CONNECTION_MODULES)
    if db_driver != "psycopg":
        del modules["test_a_prepared"]  # psycopg's prepared statements only
    expected: list[str] = []
    for name, (source, outcomes) in modules.items():
        project.module(name, source)
        expected += [f"*{name}.py::{test} {outcome}*" for test, outcome in outcomes.items()]
    result = project.run("-v")
    # In file order: each module's tests ran in turn, with the outcome each must have.
    result.stdout.fnmatch_lines(expected)
    # The commit on the connection is reported at the committing test's teardown.
    result.stdout.fnmatch_lines(["*test_e_commit.py::test_1_commits ERROR*"])
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_1_commits*", "*public.things (0 -> 1 rows)*"]
    )
    result.stdout.fnmatch_lines(["*_ test_5_fails_midway _*", "*AssertionError: the test failed*"])
    result.stdout.fnmatch_lines(["*_ test_2_starts_clean_and_writes _*", "*no_such_column*"])
    passed = sum(
        outcome == "PASSED" for _, outcomes in modules.values() for outcome in outcomes.values()
    )
    result.assert_outcomes(passed=passed, failed=2, errors=1)
