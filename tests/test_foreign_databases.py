"""Nothing is written outside the kit's databases: not by an Alembic env.py that reads the app's
settings, not by the app's own engine, whatever the shell's environment names.

The shell's DATABASE_URL points at a canary database on a real server (a developer's own
database); every test checks that the canary is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project, assert_nothing_left, drop_by_hand, sql_rows
from sqlalchemy.engine import URL

from anyio_fastapi_testkit._postgres.server import RunningServer

CANARY_ROWS = [(1, "the developer's own row")]


def canary_state(url: URL) -> list[object]:
    """Everything a run could change in the canary: its tables and its rows."""
    tables = sql_rows(
        url,
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
    )
    rows = sql_rows(url, "SELECT id, name FROM items ORDER BY id")
    return [tables, rows]


@pytest.fixture
def canary(pg_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[URL]:
    """A database of the developer's, with a table the app's models would write to, named by
    the shell's DATABASE_URL as the app's settings read it."""
    admin = pg_server.info.admin_url
    drop_by_hand(admin, "canary")
    sql_rows(admin, "CREATE DATABASE canary")
    url = admin.set(database="canary")
    sql_rows(url, "CREATE TABLE items (id integer PRIMARY KEY, name varchar(100) UNIQUE)")
    sql_rows(url, "INSERT INTO items VALUES (1, 'the developer''s own row')")
    monkeypatch.setenv(
        "DATABASE_URL", url.set(drivername="postgresql+psycopg").render_as_string(False)
    )
    before = canary_state(url)
    assert before[1] == CANARY_ROWS
    yield url
    assert canary_state(url) == before
    drop_by_hand(admin, "canary")


# An app as many are written: settings read from the environment at import, a module-level
# engine and sessionmaker, and an endpoint that writes through them (not through Depends).
SETTINGS_APP = """
import os
from functools import lru_cache

from fastapi import FastAPI
from sqlalchemy import String
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


@lru_cache
def get_settings():
    return {"database_url": os.environ["DATABASE_URL"]}


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


engine = create_async_engine(get_settings()["database_url"])
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)
app = FastAPI()


@app.post("/items/{item_id}")
async def add(item_id: int):
    async with SessionLocal() as session:
        session.add(Item(id=item_id, name=f"item {item_id}"))
        await session.commit()
    return {"id": item_id}
"""

ALEMBIC_INI = """
[alembic]
script_location = %(here)s/migrations
path_separator = os
"""

# The stock async env.py of a project that reads its URL from the app's settings.
SETTINGS_ENV_PY = """
import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from settings_app import Base, get_settings


def do_run_migrations(connection):
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations():
    engine = create_async_engine(get_settings()["database_url"])
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


asyncio.run(run_async_migrations())
"""

REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.create_table(
        "things",
        sa.Column("id", sa.Integer(), primary_key=True),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), unique=True),
    )
"""


def alembic_project(project: Project, env_py: str, **settings: str) -> None:
    project.module("settings_app", SETTINGS_APP)
    project.ini(testkit_app="settings_app:app", testkit_schema="alembic:alembic.ini", **settings)
    project.pytester.makefile(".ini", alembic=ALEMBIC_INI)
    versions = project.pytester.mkdir("migrations") / "versions"
    versions.mkdir()
    (project.pytester.path / "migrations" / "env.py").write_text(env_py)
    (versions / "0001_things.py").write_text(REVISION)


DB_TEST = """
from sqlalchemy import text

async def test_things_exist(db_session):
    assert (await db_session.scalar(text("SELECT count(*) FROM things"))) == 0
"""


def test_an_env_py_reading_the_apps_settings_never_migrates_the_shells_database(
    project: Project, canary: URL, private_tmpdir: Path
) -> None:
    alembic_project(project, SETTINGS_ENV_PY)  # no testkit_database_env
    project.module("test_db", DB_TEST)
    result = project.run()
    output = "\n".join([*result.outlines, *result.errlines])
    assert "did not migrate the kit's template database" in output, output
    assert "ForeignDatabaseError" in output and "'canary'" in output
    assert "testkit_database_env" in output
    assert str(canary.password) not in output
    assert result.ret != pytest.ExitCode.OK
    assert_nothing_left(private_tmpdir)


def test_an_env_py_that_migrates_nothing_is_reported(
    project: Project, private_tmpdir: Path
) -> None:
    # It runs without error, and without touching any database: the template stays empty.
    alembic_project(project, "print('this env.py does nothing')\n")
    project.module("test_db", DB_TEST)
    result = project.run()
    output = "\n".join([*result.outlines, *result.errlines])
    assert "is not at head (0001): it holds no version table" in output, output
    assert result.ret != pytest.ExitCode.OK
    assert_nothing_left(private_tmpdir)


APP_ENGINE_TEST = """
import pytest

from anyio_fastapi_testkit._provisioning.foreign_guard import ForeignDatabaseError


async def test_the_apps_engine_is_refused(client):
    with pytest.raises(ForeignDatabaseError, match="refused a connection to database 'canary'"):
        await client.post("/items/2")
"""


def test_the_apps_own_engine_never_reaches_the_shells_database(
    project: Project, canary: URL, private_tmpdir: Path
) -> None:
    project.module("settings_app", SETTINGS_APP)
    project.ini(testkit_app="settings_app:app", testkit_schema="settings_app:Base.metadata")
    project.module("test_app_engine", APP_ENGINE_TEST)
    project.run().assert_outcomes(passed=1)
    assert_nothing_left(private_tmpdir)


APP_ENGINE_WRITES_TEST = """
from sqlalchemy import text

async def test_the_apps_engine_writes_to_the_kit_database(client, db_engine):
    assert (await client.post("/items/2")).json() == {"id": 2}
    async with db_engine.connect() as connection:
        assert (await connection.scalar(text("SELECT count(*) FROM items"))) == 1
"""


def test_with_the_database_env_the_env_py_and_the_apps_engine_use_the_kits_databases(
    project: Project, canary: URL, private_tmpdir: Path
) -> None:
    # One sub-session for both: the same env.py migrates the template (test_db), and the
    # app's own engine writes to the test database (test_app_engine).
    alembic_project(
        project,
        SETTINGS_ENV_PY,
        testkit_database_env="DATABASE_URL",
        testkit_leak_check="off",  # the app commits on its own engine: for real, in the kit's
    )
    project.module("test_db", DB_TEST)
    project.module("test_app_engine", APP_ENGINE_WRITES_TEST)
    result = project.run("-v")
    result.stdout.fnmatch_lines_random(
        [
            "*test_db.py::test_things_exist PASSED*",
            "*test_app_engine.py::test_the_apps_engine_writes_to_the_kit_database PASSED*",
        ]
    )
    result.assert_outcomes(passed=2)
    assert_nothing_left(private_tmpdir)


def test_a_metadata_without_tables_is_one_clear_error(
    project: Project, private_tmpdir: Path
) -> None:
    project.module("empty_models", "from sqlalchemy import MetaData\n\nmetadata = MetaData()\n")
    project.ini(testkit_schema="empty_models:metadata")
    project.module(
        "test_db",
        "async def test_one(db_session):\n    pass\n\nasync def test_two(db_session):\n    pass\n",
    )
    result = project.run()
    output = "\n".join([*result.outlines, *result.errlines])
    assert "is a MetaData with no tables" in output, output
    assert result.ret != pytest.ExitCode.OK
    assert_nothing_left(private_tmpdir)
