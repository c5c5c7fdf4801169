"""The usual hand-written conftest: the app's settings point at the test database before its
import; a session engine with create_all/drop_all; per test a connection in a transaction,
the app's sessionmaker bound to it in savepoint mode (so that the billing service's own
sessions join the test's transaction), the request dependency overridden with the test's
session, an httpx client."""

import os

os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]

import pytest_asyncio
from httpx import ASGITransport, AsyncClient
from shop.db import SessionLocal, get_session
from shop.db import engine as app_engine
from shop.main import app
from shop.models import Base
from sqlalchemy.ext.asyncio import create_async_engine


@pytest_asyncio.fixture(scope="session")
async def engine():
    engine = create_async_engine(os.environ["DATABASE_URL"])
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
    await engine.dispose()
    await app_engine.dispose()


@pytest_asyncio.fixture
async def db_session(engine):
    async with engine.connect() as conn:
        await conn.begin()
        SessionLocal.configure(bind=conn, join_transaction_mode="create_savepoint")
        session = SessionLocal()
        try:
            yield session
        finally:
            await session.close()
            SessionLocal.configure(bind=app_engine, join_transaction_mode="conservative_savepoint")
            await conn.rollback()


@pytest_asyncio.fixture
async def client(db_session):
    # The test's own session for every request (the blog recipe): a session per request,
    # each in a savepoint of its own, would roll back the billing service's savepoint, which
    # is released inside the request's, when the request's session closes.
    async def override_get_session():
        yield db_session

    app.dependency_overrides[get_session] = override_get_session
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as ac:
        yield ac
    app.dependency_overrides.clear()
