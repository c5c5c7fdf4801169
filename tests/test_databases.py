"""The databases the kit owns, on a real embedded server: create, clone, drop, and hands off."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from anyio_fastapi_testkit._core.errors import DatabaseError
from anyio_fastapi_testkit._postgres.server import RunningServer, start_server
from anyio_fastapi_testkit._provisioning import databases as _databases
from anyio_fastapi_testkit._provisioning.databases import (
    RUN_ID,
    Driver,
    create_database,
    database_url,
    drop_database,
    is_ours,
)

MARK = "created by anyio-fastapi-testkit"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    # Not under pytest's basetemp: as root, a new pytest session resets /tmp/pytest-of-root
    # to 0700, and the server user could no longer reach its data (see test_server.py).
    base = Path(tempfile.mkdtemp(prefix="testkit-tests-"))
    running = start_server(None, base_dir=base, prefer="embedded")
    yield running
    running.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def admin_url(server: RunningServer) -> URL:
    return server.info.admin_url


def connect(url: URL, name: str | None = None) -> psycopg.Connection[tuple[Any, ...]]:
    target = url if name is None else url.set(database=name)
    return psycopg.connect(target.render_as_string(hide_password=False), autocommit=True)


def run(url: URL, statement: str | sql.Composed, name: str | None = None) -> list[Any]:
    with connect(url, name) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def exists(url: URL, name: str) -> bool:
    return bool(run(url, sql.SQL("SELECT 1 FROM pg_database WHERE datname = {}").format(name)))


def comment_of(url: URL, name: str) -> object:
    statement = sql.SQL(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = {}"
    ).format(name)
    return run(url, statement)[0][0]


def create_by_hand(url: URL, name: str) -> None:
    run(url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    run(url, "CREATE TABLE precious (id int)", name)


def drop_by_hand(url: URL, name: str) -> None:
    run(url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "worker", "expected"),
    [
        ("app", None, ("test_app_template", "test_app")),
        ("app", "gw0", ("test_app_template", "test_app_gw0")),
        ("app", "master", ("test_app_template", "test_app")),
        ("shop_db", "gw12", ("test_shop_db_template", "test_shop_db_gw12")),
    ],
)
def test_database_names(base: str, worker: str | None, expected: tuple[str, str]) -> None:
    assert _databases.test_database_names(base, worker) == expected


@pytest.mark.parametrize("worker", [None, "gw3"])
def test_long_database_names_stay_unique_and_within_63_bytes(worker: str | None) -> None:
    first = _databases.test_database_names("ü" * 40 + "one", worker)
    second = _databases.test_database_names("ü" * 40 + "two", worker)
    for name in (*first, *second):
        assert len(name.encode()) <= 63
        name.encode().decode()  # not cut inside a character
    assert len({*first, *second}) == 4
    template, working = first
    assert template.startswith("test_ü")
    assert working.removesuffix("_gw3" if worker else "") == template.removesuffix("_template")


def test_names_are_not_collected_as_tests() -> None:
    assert getattr(_databases.test_database_names, "__test__", True) is False


# --- creating, cloning, dropping -----------------------------------------------------------


def test_create_marks_the_database_as_ours(admin_url: URL) -> None:
    create_database(admin_url, "test_created")
    try:
        assert comment_of(admin_url, "test_created") == f"{MARK}; run {RUN_ID}"
        with connect(admin_url) as conn:
            assert is_ours(conn, "test_created")
            assert not is_ours(conn, "postgres")
            assert not is_ours(conn, "test_no_such_database")
        assert run(admin_url, "SELECT current_database()", "test_created") == [("test_created",)]
    finally:
        drop_by_hand(admin_url, "test_created")


def test_clone_copies_the_template(admin_url: URL) -> None:
    create_database(admin_url, "test_tpl_template")
    run(
        admin_url,
        "CREATE TABLE item (name text); INSERT INTO item VALUES ('x')",
        "test_tpl_template",
    )
    try:
        create_database(admin_url, "test_tpl", template="test_tpl_template", run_id="clone-run")
        assert run(admin_url, "SELECT name FROM item", "test_tpl") == [("x",)]
        assert comment_of(admin_url, "test_tpl") == f"{MARK}; run clone-run"
        assert exists(admin_url, "test_tpl_template")
    finally:
        drop_by_hand(admin_url, "test_tpl")
        drop_by_hand(admin_url, "test_tpl_template")


def test_clone_waits_for_sessions_to_leave_the_template(admin_url: URL) -> None:
    create_database(admin_url, "test_wait_template")
    lingering = connect(admin_url, "test_wait_template")
    closer = threading.Timer(0.4, lingering.close)
    closer.start()
    try:
        create_database(admin_url, "test_wait", template="test_wait_template", busy_timeout=10)
        assert exists(admin_url, "test_wait")
        assert lingering.closed
    finally:
        closer.cancel()
        lingering.close()
        drop_by_hand(admin_url, "test_wait")
        drop_by_hand(admin_url, "test_wait_template")


def test_clone_from_a_busy_template_explains_the_fix(admin_url: URL) -> None:
    create_database(admin_url, "test_busy_template")
    try:
        with connect(admin_url, "test_busy_template") as lingering:
            lingering.execute("SET application_name = 'lingering-test'")
            with pytest.raises(DatabaseError) as caught:
                create_database(
                    admin_url, "test_busy", template="test_busy_template", busy_timeout=0.3
                )
            message = str(caught.value)
            assert "'test_busy_template'" in message
            assert f"pid {lingering.info.backend_pid}" in message
            assert "lingering-test" in message
            assert "engine.dispose()" in message
            assert lingering.execute("SELECT 1").fetchone() == (1,)  # left connected
        assert not exists(admin_url, "test_busy")
    finally:
        drop_by_hand(admin_url, "test_busy_template")


def test_drop_removes_our_database_even_with_sessions(admin_url: URL) -> None:
    create_database(admin_url, "test_dropped")
    session = connect(admin_url, "test_dropped")
    drop_database(admin_url, "test_dropped")
    assert not exists(admin_url, "test_dropped")
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()


def test_dropping_a_missing_database_does_nothing(admin_url: URL) -> None:
    drop_database(admin_url, "test_never_created")
    assert not exists(admin_url, "test_never_created")


def test_a_leftover_of_ours_is_recreated_empty(admin_url: URL) -> None:
    create_database(admin_url, "test_leftover", run_id="killed-run")
    run(admin_url, "CREATE TABLE stale (id int)", "test_leftover")
    session = connect(admin_url, "test_leftover")  # a killed run's connection
    try:
        create_database(admin_url, "test_leftover", run_id="next-run")
        assert comment_of(admin_url, "test_leftover") == f"{MARK}; run next-run"
        tables = "SELECT count(*) FROM pg_tables WHERE tablename = 'stale'"
        assert run(admin_url, tables, "test_leftover") == [(0,)]
    finally:
        session.close()
        drop_by_hand(admin_url, "test_leftover")


@pytest.mark.parametrize("comment", [None, "our team's scratch database"])
def test_a_database_the_kit_did_not_create_is_never_touched(
    admin_url: URL, comment: str | None
) -> None:
    create_by_hand(admin_url, "test_foreign")
    if comment is not None:
        run(admin_url, sql.SQL("COMMENT ON DATABASE test_foreign IS {}").format(comment))
    try:
        with pytest.raises(DatabaseError) as refused_create:
            create_database(admin_url, "test_foreign")
        with pytest.raises(DatabaseError) as refused_drop:
            drop_database(admin_url, "test_foreign")
        for caught, action in ((refused_create, "recreate"), (refused_drop, "drop")):
            message = str(caught.value)
            assert "'test_foreign' exists" in message
            assert "not created by anyio-fastapi-testkit" in message
            assert f"will not {action} it" in message
            assert "drop or rename it yourself" in message
            assert "testkit_database_url" in message
            assert str(admin_url.password) not in message
        assert run(admin_url, "SELECT count(*) FROM precious", "test_foreign") == [(0,)]
        assert comment_of(admin_url, "test_foreign") == comment
    finally:
        drop_by_hand(admin_url, "test_foreign")


def test_a_name_longer_than_postgres_allows_is_refused(admin_url: URL) -> None:
    name = "test_" + "x" * 59
    with pytest.raises(DatabaseError, match=r"64 bytes.*1 to 63 bytes"):
        create_database(admin_url, name)
    assert not exists(admin_url, name[:63])


def test_a_missing_template_is_reported(admin_url: URL) -> None:
    with pytest.raises(DatabaseError, match='template database "test_absent" does not exist'):
        create_database(admin_url, "test_orphan_clone", template="test_absent")
    assert not exists(admin_url, "test_orphan_clone")


# --- URLs ----------------------------------------------------------------------------------


def test_database_url_for_each_driver(admin_url: URL) -> None:
    expected: dict[Driver | None, str] = {
        None: "postgresql",
        "psycopg": "postgresql+psycopg",
        "asyncpg": "postgresql+asyncpg",
    }
    for driver, drivername in expected.items():
        url = database_url(admin_url, "test_urls", driver)
        assert (url.drivername, url.database) == (drivername, "test_urls")
        assert (url.host, url.port, url.password) == (
            admin_url.host,
            admin_url.port,
            admin_url.password,
        )
    with pytest.raises(ValueError, match="psycopg"):
        database_url(admin_url, "test_urls", "pg8000")  # type: ignore[arg-type]


def test_database_urls_connect_with_both_drivers(admin_url: URL) -> None:
    create_database(admin_url, "test_drivers")
    try:
        engine = create_engine(database_url(admin_url, "test_drivers", "psycopg"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == "test_drivers"
        engine.dispose()
        async_url = database_url(admin_url, "test_drivers", "asyncpg")
        assert asyncio.run(current_database(async_url)) == "test_drivers"
    finally:
        drop_database(admin_url, "test_drivers")


async def current_database(url: URL) -> object:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT current_database()"))).scalar()
    finally:
        await engine.dispose()
