"""Health and settings. The health test needs no database, so it also runs on trio
(``pytest --testkit-backends="asyncio trio"``); the others skip there."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from taskboard.db import engine
from taskboard.settings import get_settings


async def test_health(client: httpx.AsyncClient, anyio_backend: str) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "app": "taskboard"}


async def test_settings_come_from_the_separate_variables(db_session: AsyncSession) -> None:
    # testkit_database_env set DATABASE__HOSTNAME ... before the app (and its cached
    # settings) were imported: they name the kit's test database, not the default.
    database = get_settings().database
    assert database.name == await db_session.scalar(text("SELECT current_database()"))
    assert database.name.startswith("test_")
    assert database.password.get_secret_value()  # the kit's per-run password


def test_the_import_time_engine_points_at_the_test_database() -> None:
    assert engine.url.drivername == "postgresql+asyncpg"
    assert engine.url.database == get_settings().database.name
    assert engine.url.host == get_settings().database.hostname


async def test_the_schema_comes_from_the_alembic_migration(db_session: AsyncSession) -> None:
    version = await db_session.scalar(text("SELECT version_num FROM alembic_version"))
    assert version == "0001"


async def test_the_conftest_imported_app_reads_the_test_database(
    settings_database: str, database_url: str
) -> None:
    # conftest.py imported the app and read its cached settings before any fixture ran.
    assert str(database_url).rsplit("/", 1)[1].split("?")[0] == settings_database


async def test_two_clients_side_by_side(client: Any, admin_client: Any) -> None:
    assert client is not admin_client
    assert admin_client.headers["Authorization"] == "Bearer test-admin-token"
    assert "Authorization" not in client.headers
    assert (await admin_client.get("/health")).status_code == 200
