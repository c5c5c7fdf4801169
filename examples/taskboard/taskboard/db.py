"""The engine, built at import from the settings, the sessionmaker and the request dependency."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from .settings import get_settings

engine = create_async_engine(get_settings().database.url(), pool_pre_ping=True)

# expire_on_commit=False: handlers return ORM objects after commit(), and FastAPI serialises
# them outside of an await, where an expired attribute could not be loaded.
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)


async def get_session() -> AsyncIterator[AsyncSession]:
    async with SessionLocal() as session:
        yield session
