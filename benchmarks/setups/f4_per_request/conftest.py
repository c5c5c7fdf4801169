"""(F4) As F3 (the real app, ORM and database with the fixture stack built once for the
session, nothing done per test), except that each request gets a session of its own on the
shared connection, opened and closed around the request as the app's own ``get_session`` does
in production; F3 shares one session across every request. The floor of an app with a session
per request: what the kit adds per test over F4 is the kit's own plumbing alone.
The runner has created the tables beforehand."""

import os

try:
    import httpx2 as http  # what the kit's client uses where it is installed
except ImportError:  # httpx2 needs Python 3.11
    import httpx as http

import pytest
from asgi_lifespan import LifespanManager
from benchapp.db import get_session
from benchapp.main import app
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
async def client(anyio_backend):
    engine = create_async_engine(os.environ["BENCH_DATABASE_URL"])
    async with engine.connect() as conn:
        await conn.begin()

        async def override_get_session():
            async with AsyncSession(
                bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False
            ) as session:
                yield session

        app.dependency_overrides[get_session] = override_get_session
        try:
            async with LifespanManager(app) as manager:
                async with http.AsyncClient(
                    transport=http.ASGITransport(app=manager.app), base_url="http://testserver"
                ) as ac:
                    yield ac
        finally:
            app.dependency_overrides.clear()
            await conn.rollback()
    await engine.dispose()
