"""The database fixtures in real sub-sessions: isolation, savepoints, overrides, servers, cleanup.

Each test writes a small project (the items app of conftest.py, its tests and settings) and
runs pytest on it in a subprocess, on the embedded server unless it says otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import (
    ITEMS_APP,
    Project,
    assert_nothing_left,
    database_names,
    drop_by_hand,
    sql_rows,
)
from scaffolding import items_revision, write_alembic
from sqlalchemy.engine import URL

from anyio_fastapi_testkit._core.config import url_driver
from anyio_fastapi_testkit._postgres.server import RunningServer

ITEMS_SETTINGS = {
    "testkit_app": "items_app:app",
    "testkit_schema": "items_app:Base.metadata",
    "testkit_session_dependency": "items_app:get_session",
}

# Helpers the sub-sessions' tests import.
ITEMS_HELPERS = """
from sqlalchemy import select

from items_app import Item


async def names(session):
    return list(await session.scalars(select(Item.name).order_by(Item.name)))
"""


@pytest.fixture(autouse=True)
def _embedded_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's TESTKIT_DATABASE_URL would turn the embedded-server tests into URL tests.
    monkeypatch.delenv("TESTKIT_DATABASE_URL", raising=False)


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # PID 1 may not reap
    except psutil.NoSuchProcess:
        return False


def items_project(project: Project, **settings: str) -> Project:
    project.module("items_app", ITEMS_APP)
    project.module("helpers", ITEMS_HELPERS)
    project.ini(**{**ITEMS_SETTINGS, **settings})
    return project


# --- isolation -----------------------------------------------------------------------------

# The tests of one items project, each module a behaviour: they run in one sub-session per
# driver, and each test's outcome is checked by name.

# Each test starts from an empty database, whatever the one before wrote, and however.
ISOLATION_TESTS = """
        from sqlalchemy import text

        from helpers import names
        from items_app import Item

        async def test_a_writes_every_way(client, db_session, db_connection):
            assert db_connection.dialect.driver == "DRIVER"
            db_session.add(Item(name="by-session"))
            await db_session.commit()
            assert (await client.post("/items", json={"name": "by-app"})).status_code == 201
            await db_connection.execute(text("INSERT INTO items (name) VALUES ('by-raw-sql')"))
            async with db_connection.begin_nested():  # a released savepoint looks committed
                await db_connection.execute(text("INSERT INTO items (name) VALUES ('by-sp')"))
            await db_connection.execute(text("CREATE TABLE scratch (id int)"))
            assert await names(db_session) == ["by-app", "by-raw-sql", "by-session", "by-sp"]
            assert (await client.get("/items")).json() == await names(db_session)

        async def test_b_sees_none_of_it(client, db_session, db_connection):
            assert await names(db_session) == []
            assert (await client.get("/items")).json() == []
            table = await db_connection.scalar(text("SELECT to_regclass('scratch')"))
            assert table is None

        async def test_c_can_reuse_the_names(client, db_session):
            assert (await client.post("/items", json={"name": "by-app"})).status_code == 201
            db_session.add(Item(name="by-session"))
            await db_session.commit()
            assert await names(db_session) == ["by-app", "by-session"]
        """

# The app can roll back (and so can the test), and the test goes on.
ROLLBACK_TESTS = """
        import pytest
        from sqlalchemy.exc import IntegrityError

        from helpers import names
        from items_app import Item

        async def test_conflict_then_more_work(client, db_session):
            assert (await client.post("/items", json={"name": "dup"})).status_code == 201
            conflict = await client.post("/items", json={"name": "dup"})
            assert conflict.status_code == 409, conflict.text
            assert conflict.json() == {"detail": "dup exists"}
            # The app's rollback undid only its own failed work.
            assert (await client.post("/items", json={"name": "after"})).status_code == 201
            db_session.add(Item(name="by-test"))
            await db_session.commit()
            assert await names(db_session) == ["after", "by-test", "dup"]
            # The test's own failed commit and rollback keep the earlier work too.
            db_session.add(Item(name="after"))
            with pytest.raises(IntegrityError):
                await db_session.commit()
            await db_session.rollback()
            assert (await client.get("/items")).json() == ["after", "by-test", "dup"]

        async def test_next_test_is_clean(client):
            assert (await client.get("/items")).json() == []
        """

# Savepoints in the test and in the app.
SAVEPOINT_TESTS = """
        import pytest
        from sqlalchemy.exc import IntegrityError

        from helpers import names
        from items_app import Item

        async def test_rolled_back_savepoint_keeps_earlier_work(db_session):
            db_session.add(Item(name="kept"))
            await db_session.commit()
            db_session.add(Item(name="flushed"))
            await db_session.flush()
            nested = await db_session.begin_nested()
            db_session.add(Item(name="dropped"))
            await db_session.flush()
            await nested.rollback()
            assert await names(db_session) == ["flushed", "kept"]
            with pytest.raises(IntegrityError):
                async with db_session.begin_nested():
                    db_session.add(Item(name="kept"))
            assert await names(db_session) == ["flushed", "kept"]
            async with db_session.begin_nested():
                db_session.add(Item(name="released"))
            await db_session.commit()
            assert await names(db_session) == ["flushed", "kept", "released"]

        async def test_app_savepoints_skip_only_the_duplicates(client, db_session):
            db_session.add(Item(name="old"))
            await db_session.commit()
            response = await client.post("/items/batch", json={"names": ["x", "old", "y", "x"]})
            assert response.json() == {"created": ["x", "y"], "skipped": ["old", "x"]}
            assert await names(db_session) == ["old", "x", "y"]
        """

# The app and the test see each other's rows.
OVERRIDE_TESTS = """
        from helpers import names
        from items_app import Item

        async def test_each_sees_the_others_rows(client, db_session):
            db_session.add(Item(name="from-test"))
            await db_session.commit()
            assert (await client.get("/items")).json() == ["from-test"]
            assert (await client.post("/items", json={"name": "from-app"})).status_code == 201
            assert await names(db_session) == ["from-app", "from-test"]

        async def test_even_unflushed_rows(client, db_session):
            db_session.add(Item(name="pending"))  # flushed by the kit before the request
            assert (await client.get("/items")).json() == ["pending"]
        """

# Concurrent requests in one test.
CONCURRENT_TESTS = """
        import anyio

        from helpers import names

        async def test_ten_posts_at_once(client, db_session):
            statuses = {}

            async def create(n):
                response = await client.post("/items", json={"name": f"item-{n:02}"})
                statuses[n] = response.status_code

            async with anyio.create_task_group() as tg:
                for n in range(10):
                    tg.start_soon(create, n)

            assert statuses == dict.fromkeys(range(10), 201)
            assert await names(db_session) == [f"item-{n:02}" for n in range(10)]
            assert len((await client.get("/items")).json()) == 10
        """

# Nothing of a test outlives it. FastAPI caches what it learns of a dependency by the function,
# for good: an override made per test would keep every test's transaction (and its task group,
# lock, client) alive until the end of the session.
MEMORY_TESTS = """
        import gc

        import pytest

        from anyio_fastapi_testkit._isolation.transaction import TestTransaction

        @pytest.mark.parametrize("n", range(5))
        async def test_requests(client, n):
            assert (await client.post("/items", json={"name": f"x{n}"})).status_code == 201

        def test_none_of_them_is_kept():
            gc.collect()
            alive = [o for o in gc.get_objects() if isinstance(o, TestTransaction)]
            # (The last test's may still be referenced from this one's set-up.)
            assert len(alive) <= 1, f"{len(alive)} transactions of earlier tests are alive"
        """

# The database URL hides its password in repr, and names the database the fixtures use.
URL_TESTS = """
        from sqlalchemy.engine import make_url

        def test_url(database_url):
            url = make_url(str(database_url))
            assert url.password
            assert url.password in str(database_url)
            assert url.password not in repr(database_url)
            assert repr(database_url) == repr(url.render_as_string(hide_password=True))
            assert url.database.startswith("test_")
            assert url.drivername == "postgresql+DRIVER"

        async def test_same_url_in_async_tests(database_url, db_connection):
            from sqlalchemy import text
            current = await db_connection.scalar(text("SELECT current_database()"))
            assert current == make_url(str(database_url)).database
        """

ITEMS_MODULES = {
    "test_isolation": ISOLATION_TESTS,
    "test_override": OVERRIDE_TESTS,
    "test_rollback": ROLLBACK_TESTS,
    "test_savepoints": SAVEPOINT_TESTS,
    "test_concurrent": CONCURRENT_TESTS,
    "test_memory": MEMORY_TESTS,
    "test_url": URL_TESTS,
}


# Nothing is left after the session: its own server, and its state folder in its TMPDIR. The
# kit's clean-up does not depend on the tests' outcomes (it reads the session's exit status only
# for an interrupt), so the one session, with passing tests and a failing one, stands for both.
CLEANUP_TEST = """
import json
import os
import tempfile
from pathlib import Path

import psutil

from helpers import names

async def test_writes(client, db_session):
    assert (await client.post("/items", json={"name": "a"})).status_code == 201
    assert await names(db_session) == ["a"]
    base = Path(tempfile.gettempdir()) / f"anyio-fastapi-testkit-{os.getuid()}"
    runs = sorted(base.glob("run-*"))
    pid = int((runs[0] / "data" / "postmaster.pid").read_text().split()[0])
    # What leftovers() looks for afterwards: the server's command line names the folder.
    found = [
        p.pid for p in psutil.process_iter(["cmdline"])
        if any(f"{base}/" in arg for arg in p.info["cmdline"] or [])
    ]
    during = {"runs": [r.name for r in runs], "pid": pid, "found": found}
    Path("during.json").write_text(json.dumps(during))

async def test_fails_while_writing(client, db_session):
    assert (await client.post("/items", json={"name": "b"})).status_code == 201
    assert False, "this test fails"
"""


def test_isolation_rollbacks_savepoints_concurrent_requests_and_cleanup(
    project: Project, db_driver: str, request: pytest.FixtureRequest
) -> None:
    items_project(project)
    for name, source in ITEMS_MODULES.items():
        project.module(name, source.replace("DRIVER", db_driver))
    # One driver's run also checks the clean-up: in a TMPDIR of its own, it makes (and must
    # delete) a throwaway cluster.
    private_tmpdir: Path | None = None
    if db_driver == "psycopg":
        private_tmpdir = request.getfixturevalue("private_tmpdir")
        project.module("test_zz_cleanup", CLEANUP_TEST)  # last: its failure touches no other
    result = project.run("-v")
    result.stdout.fnmatch_lines_random(
        [
            "*test_isolation.py::test_a_writes_every_way PASSED*",
            "*test_isolation.py::test_b_sees_none_of_it PASSED*",
            "*test_isolation.py::test_c_can_reuse_the_names PASSED*",
            "*test_override.py::test_each_sees_the_others_rows PASSED*",
            "*test_override.py::test_even_unflushed_rows PASSED*",
            "*test_rollback.py::test_conflict_then_more_work PASSED*",
            "*test_rollback.py::test_next_test_is_clean PASSED*",
            "*test_savepoints.py::test_rolled_back_savepoint_keeps_earlier_work PASSED*",
            "*test_savepoints.py::test_app_savepoints_skip_only_the_duplicates PASSED*",
            "*test_concurrent.py::test_ten_posts_at_once PASSED*",
            *(f"*test_memory.py::test_requests[[]{n}[]] PASSED*" for n in range(5)),
            "*test_memory.py::test_none_of_them_is_kept PASSED*",
            "*test_url.py::test_url PASSED*",
            "*test_url.py::test_same_url_in_async_tests PASSED*",
        ]
    )
    # In file order (Project.run turns pytest-randomly off): each module's tests ran in turn.
    result.stdout.fnmatch_lines(
        [
            "*::test_a_writes_every_way PASSED*",
            "*::test_b_sees_none_of_it PASSED*",
            "*::test_c_can_reuse_the_names PASSED*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*::test_requests[[]4[]] PASSED*", "*::test_none_of_them_is_kept PASSED*"]
    )
    if private_tmpdir is None:
        result.assert_outcomes(passed=18)
        return
    result.stdout.fnmatch_lines(
        [
            "*test_zz_cleanup.py::test_writes PASSED*",
            "*test_zz_cleanup.py::test_fails_while_writing FAILED*",
            "*this test fails*",
        ]
    )
    result.assert_outcomes(passed=19, failed=1)
    during = json.loads((project.pytester.path / "during.json").read_text())
    # The session did have its own server and state folder in its private TMPDIR ...
    assert len(during["runs"]) == 1
    assert during["pid"] in during["found"]
    # ... and neither survived it.
    assert not running(during["pid"])
    assert_nothing_left(private_tmpdir)


# --- backends ------------------------------------------------------------------------------


def test_on_trio_database_tests_skip_and_client_only_tests_pass(project: Project) -> None:
    items_project(project, testkit_backends="asyncio trio")
    project.module(
        "test_trio",
        """
        from helpers import names

        async def test_uses_the_database(client, db_session):
            assert (await client.post("/items", json={"name": "a"})).status_code == 201
            assert await names(db_session) == ["a"]

        async def test_client_only(client, anyio_backend):
            assert (await client.get("/health")).json() == {"status": "ok"}
        """,
    )
    result = project.run("-v", "-rs")
    result.stdout.fnmatch_lines_random(
        [
            "*test_uses_the_database[[]asyncio[]] PASSED*",
            "*test_uses_the_database[[]trio[]] SKIPPED*",
            "*test_client_only[[]asyncio[]] PASSED*",
            "*test_client_only[[]trio[]] PASSED*",
            "SKIPPED *test_trio.py*async driver (psycopg) runs on asyncio only*",
        ]
    )
    result.assert_outcomes(passed=3, skipped=1)


SYNC_APP = """
import os

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import create_engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from items_app import Item, ItemIn

SessionLocal = sessionmaker(expire_on_commit=False)
_engine = None


def get_sync_session():
    global _engine
    if _engine is None:
        url = os.environ.get("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/nowhere")
        _engine = create_engine(url)
        SessionLocal.configure(bind=_engine)
    with SessionLocal() as session:
        yield session


app = FastAPI(title="sync items")


@app.post("/items", status_code=201)
def create_item(body: ItemIn, session: Session = Depends(get_sync_session)):
    item = Item(name=body.name)
    session.add(item)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(status_code=409, detail=f"{body.name} exists") from None
    return {"id": item.id, "name": item.name}


@app.get("/items")
def list_items(session: Session = Depends(get_sync_session)):
    return list(session.scalars(select(Item.name).order_by(Item.name)))
"""


def test_sync_endpoints_use_db_session_sync_on_both_backends(project: Project) -> None:
    items_project(
        project,
        testkit_app="sync_app:app",
        testkit_session_dependency="sync_app:get_sync_session",
        testkit_backends="asyncio trio",
    )
    project.module("sync_app", SYNC_APP)
    project.module(
        "test_sync_app",
        """
        from sqlalchemy import select

        from items_app import Item

        def names(session):
            return list(session.scalars(select(Item.name).order_by(Item.name)))

        async def test_a_writes(client, db_session_sync, anyio_backend):
            assert (await client.post("/items", json={"name": anyio_backend})).status_code == 201
            assert (await client.post("/items", json={"name": anyio_backend})).status_code == 409
            assert (await client.post("/items", json={"name": "z-app"})).status_code == 201
            db_session_sync.add(Item(name="by-test"))
            db_session_sync.commit()
            expected = sorted([anyio_backend, "by-test", "z-app"])
            assert (await client.get("/items")).json() == expected
            assert names(db_session_sync) == expected

        async def test_b_sees_nothing(client, db_session_sync):
            assert (await client.get("/items")).json() == []
            assert names(db_session_sync) == []

        def test_c_plain_sync_test(db_session_sync):
            db_session_sync.add(Item(name="sync"))
            db_session_sync.commit()
            assert names(db_session_sync) == ["sync"]

        def test_d_sees_nothing(db_session_sync):
            assert names(db_session_sync) == []
        """,
    )
    result = project.run("-v")
    result.stdout.fnmatch_lines_random(
        [
            "*test_a_writes[[]asyncio[]] PASSED*",
            "*test_a_writes[[]trio[]] PASSED*",
            "*test_b_sees_nothing[[]asyncio[]] PASSED*",
            "*test_b_sees_nothing[[]trio[]] PASSED*",
        ]
    )
    result.assert_outcomes(passed=6)


# --- the database URL and the environment ---------------------------------------------------


ENV_APP = """
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

# Read at import, as many apps do: the kit must set these before the app is imported.
DATABASE_URL = os.environ["DATABASE_URL"]
SEEN = {name: os.environ[name] for name in ("APP_DB_HOST", "APP_DB_NAME", "APP_DB_PORT")}
engine = create_async_engine(DATABASE_URL)


@asynccontextmanager
async def lifespan(app):
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/whoami")
async def whoami():
    async with engine.connect() as connection:
        return {"database": await connection.scalar(text("SELECT current_database()"))}
"""

ENV_NAMES = ("DATABASE_URL", "APP_DB_HOST", "APP_DB_NAME", "APP_DB_PORT")


def _env_recorder(project: Project) -> None:
    """A plugin (``-p env_recorder``) that records the variables when pytest loads it, before
    the kit can set them, and after the kit has restored them."""
    names = ", ".join(repr(name) for name in ENV_NAMES)
    project.module(
        "env_recorder",
        f"""
        import json
        import os

        import pytest

        NAMES = ({names})

        def record(file):
            with open(file, "w") as handle:
                json.dump({{name: os.environ.get(name) for name in NAMES}}, handle)

        record("env-before.json")

        @pytest.hookimpl(trylast=True)
        def pytest_unconfigure(config):
            record("env-after.json")
        """,
    )


def test_database_env_is_set_before_the_app_is_imported_and_restored(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("APP_DB_HOST", "host-before-the-session")
    project.ini(
        testkit_app="env_app:app",
        testkit_database_env="DATABASE_URL APP_DB_HOST={host} APP_DB_NAME={database} "
        "APP_DB_PORT={port}",
    )
    project.module("env_app", ENV_APP)
    _env_recorder(project)
    # As most projects' conftest.py: the app imported at module level, before any fixture.
    project.pytester.makeconftest("from env_app import app  # noqa: F401\n")
    project.module(
        "test_env",
        """
        import os

        from sqlalchemy.engine import make_url

        import env_app

        async def test_the_app_reaches_the_test_database(client, database_url):
            url = make_url(str(database_url))
            assert url.database.startswith("test_")
            assert (await client.get("/whoami")).json() == {"database": url.database}
            assert env_app.SEEN == {
                "APP_DB_HOST": url.host,
                "APP_DB_NAME": url.database,
                "APP_DB_PORT": str(url.port),
            }
            app_url = make_url(env_app.DATABASE_URL)
            assert app_url.database == url.database
            assert app_url.password == url.password
            assert os.environ["APP_DB_HOST"] == "127.0.0.1"
        """,
    )
    project.run("-p", "env_recorder").assert_outcomes(passed=1)
    before = json.loads((project.pytester.path / "env-before.json").read_text())
    after = json.loads((project.pytester.path / "env-after.json").read_text())
    expected = dict.fromkeys(ENV_NAMES) | {"APP_DB_HOST": "host-before-the-session"}
    assert before == expected
    assert after == expected


@pytest.mark.parametrize("how", ["plugin", "late-kit"])
def test_an_app_imported_before_the_database_env_stops_the_run(
    project: Project, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The app read the shell's DATABASE_URL before the kit could set it: the run stops with
    the module named, and nothing runs on the shell's settings."""
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://prod:secret@db.example.com/prod")
    project.ini(testkit_app="env_app:app", testkit_database_env="DATABASE_URL")
    project.module("env_app", ENV_APP.replace("SEEN = {", "SEEN = None and {"))
    project.module("test_env", "def test_never_runs():\n    raise AssertionError('it ran')\n")
    if how == "plugin":
        project.module("app_plugin", "import env_app  # noqa: F401\n")
        result = project.run("-p", "app_plugin")
        when = "by a plugin loaded at start-up"
    else:
        # The kit loaded from a conftest.py that imports the app first.
        project.pytester.makeconftest(
            "import env_app  # noqa: F401\npytest_plugins = ['anyio_fastapi_testkit.plugin']\n"
        )
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        result = project.run()
        when = "by a conftest.py"
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert "'env_app'" in output and when in output, output
    assert "it ran" not in output
    assert "secret" not in output
    assert output.count("testkit_database_env is set, but") == 1


# --- URL mode: a server of the developer's ----------------------------------------------------


@pytest.fixture
def appdb(pg_server: RunningServer) -> Iterator[URL]:
    """A developer's database ``appdb`` with a table and a row, on the module's server."""
    admin = pg_server.info.admin_url
    for name in ("appdb", "test_appdb", "test_appdb_template"):
        drop_by_hand(admin, name)
    sql_rows(admin, "CREATE DATABASE appdb")
    sql_rows(admin, "CREATE TABLE precious (id int, note text)", "appdb")
    sql_rows(admin, "INSERT INTO precious VALUES (1, 'keep me')", "appdb")
    yield admin.set(database="appdb")
    for name in database_names(admin):
        if name == "appdb" or name.startswith("test_appdb"):
            drop_by_hand(admin, name)


URL_MODE_TEST = """
import re

from sqlalchemy import text
from sqlalchemy.engine import make_url

from helpers import names

async def test_runs_on_test_appdb(client, db_session, database_url):
    # test_appdb_<the run's token>: other runs may share the server.
    database = make_url(str(database_url)).database
    assert re.fullmatch("test_appdb_[0-9a-f]{8}", database), database
    assert await db_session.scalar(text("SELECT current_database()")) == database
    # A database of the kit's own: the developer's tables are not in it.
    assert await db_session.scalar(text("SELECT to_regclass('precious')")) is None
    assert (await client.post("/items", json={"name": "a"})).status_code == 201
    assert await names(db_session) == ["a"]
    # The URL names no driver: the kit's default.
    assert database_url.startswith("postgresql+psycopg://")
    assert db_session.bind.dialect.driver == "psycopg"

async def test_second_test_is_clean(client):
    assert (await client.get("/items")).json() == []
"""


@pytest.mark.parametrize("how", ["flag", "env", "ini"])
def test_a_configured_server_gets_test_databases_that_are_dropped_after(
    project: Project,
    monkeypatch: pytest.MonkeyPatch,
    private_tmpdir: Path,
    appdb: URL,
    how: str,
) -> None:
    url = appdb.render_as_string(hide_password=False)
    settings = {"testkit_database_url": url} if how == "ini" else {}
    items_project(project, **settings)
    project.module("test_url_mode", URL_MODE_TEST)
    args: list[str] = []
    if how == "flag":
        args.append(f"--testkit-db-url={url}")
    elif how == "env":
        monkeypatch.setenv("TESTKIT_DATABASE_URL", url)
    project.run(*args).assert_outcomes(passed=2)
    assert not [name for name in database_names(appdb) if name.startswith("test_appdb")]
    assert sql_rows(appdb, "SELECT id, note FROM precious") == [(1, "keep me")]
    assert_nothing_left(private_tmpdir)  # no embedded server was started


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        ("postgresql+asyncpg", "asyncpg"),
        ("postgresql+psycopg", "psycopg"),
        ("postgresql", None),
        ("postgresql+psycopg2", None),  # a sync driver names only the server
        ("postgresql+pg8000", None),
    ],
)
def test_the_driver_a_url_names_is_read_from_its_scheme(scheme: str, expected: str | None) -> None:
    assert url_driver(f"{scheme}://u:pw@127.0.0.1:5432/db") == expected


# End to end, the cases where the URL's own driver could win and must not, or must: the URL's
# async driver (not the default) reaches the engine; a sync driver gives the default; the
# setting wins over the URL. (A URL naming no driver is URL_MODE_TEST's: psycopg.)
@pytest.mark.parametrize(
    ("scheme", "setting", "expected"),
    [
        ("postgresql+asyncpg", None, "asyncpg"),
        ("postgresql+psycopg2", None, "psycopg"),
        ("postgresql+asyncpg", "psycopg", "psycopg"),  # the setting wins
    ],
)
def test_the_driver_comes_from_the_setting_else_from_the_url(
    project: Project, appdb: URL, scheme: str, setting: str | None, expected: str
) -> None:
    settings = {"testkit_database_driver": setting} if setting else {}
    items_project(project, **settings)
    project.module(
        "test_driver",
        f"""
        from sqlalchemy import text

        async def test_driver(db_engine, db_session, database_url):
            assert db_engine.dialect.driver == {expected!r}
            assert database_url.startswith("postgresql+{expected}://")
            assert (await db_session.execute(text("SELECT 1"))).scalar() == 1
        """,
    )
    url = appdb.set(drivername=scheme).render_as_string(hide_password=False)
    project.run(f"--testkit-db-url={url}").assert_outcomes(passed=1)


KEPT_TEMPLATES = (
    "SELECT datname FROM pg_database WHERE shobj_description(oid, 'pg_database') "
    "LIKE 'created by anyio-fastapi-testkit; run kept template %'"
)


def test_a_database_the_kit_did_not_create_is_left_alone(project: Project, appdb: URL) -> None:
    # Named as the kit named its databases before runs had tokens, and as it names them now:
    # without the kit's mark, neither is touched. (A run's names are its own, so a clash with
    # the kit's refusal is tested on names given directly, in test_databases.py.)
    foreign = ("test_appdb", "test_appdb_0badf00d", "test_appdb_0badf00d_template")
    for name in foreign:
        sql_rows(appdb, f"CREATE DATABASE {name}")
        sql_rows(appdb, "CREATE TABLE mine (note text)", name)
        sql_rows(appdb, "INSERT INTO mine VALUES ('not the kit''s')", name)
    items_project(project)
    project.module("test_url_mode", URL_MODE_TEST)
    result = project.run(f"--testkit-db-url={appdb.render_as_string(hide_password=False)}")
    result.assert_outcomes(passed=2)
    for name in foreign:
        assert sql_rows(appdb, "SELECT note FROM mine", name) == [("not the kit's",)]
    assert sql_rows(appdb, "SELECT id, note FROM precious") == [(1, "keep me")]
    kits = {name for name in database_names(appdb) if name.startswith("test_")} - set(foreign)
    # All the run left of its own is the template it keeps for the next run, marked as such.
    kept = sql_rows(appdb, KEPT_TEMPLATES)
    assert sorted(name for (name,) in kept) == sorted(kits), kept


# --- Alembic -------------------------------------------------------------------------------

# An async env.py: the URL the kit sets names no driver, so it picks the async one.
ALEMBIC_ENV = """
import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config


def migrate(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def main():
    url = make_url(config.get_main_option("sqlalchemy.url"))
    engine = create_async_engine(url.set(drivername="postgresql+psycopg"), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(migrate)
    await engine.dispose()


asyncio.run(main())
"""


def alembic_project(project: Project) -> None:
    """The items project, its schema from one Alembic revision (with a seeded row), migrated
    by an async env.py."""
    items_project(project, testkit_schema="alembic:alembic.ini")
    seed = "    op.execute(\"INSERT INTO items (name) VALUES ('seeded by the migration')\")\n"
    write_alembic(project.pytester.path, {"0001_items.py": items_revision(seed)}, env=ALEMBIC_ENV)


def test_the_schema_comes_from_alembic_migrations(project: Project) -> None:
    alembic_project(project)
    project.module(
        "test_alembic",
        """
        from sqlalchemy import text

        from helpers import names

        async def test_migrated_tables(client, db_session):
            version = await db_session.scalar(text("SELECT version_num FROM alembic_version"))
            assert version == "0001"
            assert await names(db_session) == ["seeded by the migration"]
            assert (await client.post("/items", json={"name": "new"})).status_code == 201
            assert await names(db_session) == ["new", "seeded by the migration"]

        async def test_each_test_gets_the_migrated_state(db_session):
            assert await names(db_session) == ["seeded by the migration"]
        """,
    )
    project.run().assert_outcomes(passed=2)
