"""(F3) The real app, ORM and database with the whole fixture stack of the savepoint recipe
(engine, connection, outer transaction, savepoint-mode session, dependency override, client)
built once for the session; nothing is done per test, so the tests' rows accumulate.
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
        session = AsyncSession(
            bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False
        )

        async def override_get_session():
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
            await session.close()
            await conn.rollback()
    await engine.dispose()
