"""A typed suite type-checks with ``mypy --strict`` from the public package alone.

One mypy run on a tiny folder: a sample suite annotating every public fixture with public
types (no import of the kit's private modules), which must pass, and a file with a misspelled
import and a misused fixture type, which must be rejected.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio_fastapi_testkit as kit
from anyio_fastapi_testkit import fixtures

SAMPLE_SUITE = """
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from anyio_fastapi_testkit import (
    AppError,
    BlockedLoopWarning,
    CacheWarning,
    ClientFactory,
    ClientOptions,
    ConfigError,
    DatabaseError,
    ForeignDatabaseError,
    LeakedTaskWarning,
    QueryCounter,
    QueryLimit,
    QueryLog,
    TestkitError,
    TestkitWarning,
    WebSocketClosed,
    WebSocketConnect,
    WebSocketRejected,
    WebSocketSession,
    override_dependencies,
    persist_with,
)

Overrides = dict[Callable[..., Any], Callable[..., Any]]


async def test_http(
    anyio_backend: str,
    app: FastAPI,
    app_lifespan: FastAPI,
    client: httpx.AsyncClient,
    client_factory: ClientFactory,
    dependency_overrides: Overrides,
    live_server: str,
) -> None:
    options: ClientOptions = {"headers": {"x-user": "ann"}, "follow_redirects": True}
    other: httpx.AsyncClient = client_factory(**options)
    first = await client.get("/items")
    second = await other.get(f"{live_server}/items")
    assert first.status_code == second.status_code
    dependency_overrides[len] = lambda: 0
    with override_dependencies(app, {len: lambda: 1}) as overrides:
        assert overrides is app.dependency_overrides
    assert app_lifespan is app and anyio_backend in ("asyncio", "trio")


async def test_websocket(
    websocket_connect: WebSocketConnect,
) -> None:
    session: WebSocketSession = websocket_connect("/ws", authorization="Bearer x")
    async with session as ws:
        await ws.send_json({"hello": 1})
        reply: str = await ws.receive_text()
        await ws.close(1000)
    code: int | None = ws.close_code
    assert reply and code == 1000
    with pytest.raises(WebSocketRejected) as rejected:
        async with websocket_connect("/private"):
            pass
    closed: WebSocketClosed = rejected.value
    assert closed.code == 1008


async def test_database(
    database_url: str,
    db_engine: AsyncEngine,
    db_connection: AsyncConnection,
    db_session: AsyncSession,
    db_session_sync: Session,
) -> None:
    assert database_url.startswith("postgresql")
    await db_connection.execute(text("select 1"))
    await db_session.execute(text("select 1"))
    db_session_sync.execute(text("select 1"))
    with persist_with(db_session):
        pass
    assert db_engine.url.database


async def test_queries(
    client: httpx.AsyncClient,
    count_queries: QueryCounter,
    assert_max_queries: QueryLimit,
    assert_num_queries: QueryLimit,
) -> None:
    with count_queries(show_parameters=True) as queries:
        await client.get("/items")
    log: QueryLog = queries
    statements: list[str] = log.statements
    async with assert_max_queries(3):
        await client.get("/items")
    with assert_num_queries(len(statements)) as same:
        await client.get("/items")
    assert len(same) == len(queries)


def test_errors_and_warnings() -> None:
    errors: tuple[type[TestkitError], ...] = (
        AppError,
        ConfigError,
        DatabaseError,
        ForeignDatabaseError,
    )
    kinds: tuple[type[TestkitWarning], ...] = (BlockedLoopWarning, CacheWarning, LeakedTaskWarning)
    warnings.simplefilter("error", CacheWarning)
    assert errors and kinds
"""

REJECTED = """
from anyio_fastapi_testkit import ClientFactori
from anyio_fastapi_testkit import QueryCounter


def test_counts(count_queries: QueryCounter) -> None:
    count_queries(3)
"""


def test_public_fixtures_match_the_sample_suite() -> None:
    # The sample suite must ask for every public fixture, or a new one would go unchecked.
    asked = set(re.findall(r"^    (\w+): ", SAMPLE_SUITE, flags=re.MULTILINE))
    assert set(fixtures.__all__) - asked == set()
    imported = set(re.findall(r"^    (\w+),$", SAMPLE_SUITE, flags=re.MULTILINE))
    assert set(kit.__all__) - imported == set()


def test_mypy_strict_passes_the_sample_and_rejects_unknown_names(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_sample.py").write_text(textwrap.dedent(SAMPLE_SUITE))
    (suite / "test_rejected.py").write_text(textwrap.dedent(REJECTED))
    # An empty config, so that the project's own [tool.mypy] (files = src) does not apply.
    (tmp_path / "mypy.ini").write_text("[mypy]\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(tmp_path / "mypy.ini"),
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "--no-error-summary",
            "--hide-error-context",
            "--show-error-codes",
            str(suite),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert done.returncode == 1, done.stdout + done.stderr
    # The sample suite, using every public fixture and type, type-checks.
    assert [line for line in errors if "test_sample.py" in line] == []
    # A name the package does not export is an error, and the fixture types are not Any.
    rejected = [line for line in errors if "test_rejected.py" in line]
    assert rejected, done.stdout
    misspelled, misused = rejected[0], rejected[1:]
    assert "test_rejected.py:2:" in misspelled
    assert '"anyio_fastapi_testkit" has no attribute "ClientFactori"' in misspelled
    assert "[attr-defined]" in misspelled
    assert misused, done.stdout
    assert all("test_rejected.py:7:" in line for line in misused), done.stdout
    assert any("Too many positional arguments" in line for line in misused), done.stdout
