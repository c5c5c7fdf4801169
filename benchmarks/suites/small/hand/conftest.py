"""The hand-written conftest of such a template: the test database's URL in the settings
before the app is imported, `alembic upgrade head` once per run (and `downgrade base` at the
end), one loop for the session (anyio's plugin), and per test a connection in a transaction,
a savepoint-mode session, the app's dependency overridden and an httpx client."""

import os

os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]

import pytest
from alembic import command
from alembic.config import Config
from httpx import ASGITransport, AsyncClient
from smallapp.db import get_session
from smallapp.main import app
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

ALEMBIC_INI = os.path.join(os.path.dirname(__file__), "alembic.ini")


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def migrated():
    config = Config(ALEMBIC_INI)
    command.upgrade(config, "head")
    yield
    command.downgrade(config, "base")


@pytest.fixture(scope="session")
async def engine(migrated):
    engine = create_async_engine(os.environ["DATABASE_URL"])
    yield engine
    await engine.dispose()


@pytest.fixture
async def db_session(engine):
    async with engine.connect() as conn:
        await conn.begin()
        session = AsyncSession(
            bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        try:
            yield session
        finally:
            await session.close()
            await conn.rollback()


@pytest.fixture
async def client(db_session):
    async def override_get_session():
        yield db_session

    app.dependency_overrides[get_session] = override_get_session
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as ac:
        yield ac
    app.dependency_overrides.clear()
