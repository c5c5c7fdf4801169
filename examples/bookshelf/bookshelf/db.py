"""Database plumbing: a lazily built async engine, the session factory and the request dependency.

Nothing here connects at import time. The engine is created the first time a session is
needed, from ``DATABASE_URL``; so the app can be imported (and its lifespan run) without a
database, and a test harness can swap the session dependency before any connection is made.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

DEFAULT_DATABASE_URL = "postgresql+psycopg://localhost/bookshelf"

# expire_on_commit=False: handlers commit and then return ORM objects that FastAPI turns into
# JSON synchronously; an expired attribute there would need database IO outside an await.
SessionLocal = async_sessionmaker(class_=AsyncSession, expire_on_commit=False)

_engine: AsyncEngine | None = None


def database_url() -> str:
    return os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)


def get_engine() -> AsyncEngine:
    """The process-wide engine, created on first use."""
    global _engine
    if _engine is None:
        _engine = create_async_engine(database_url(), pool_pre_ping=True)
        SessionLocal.configure(bind=_engine)
    return _engine


async def dispose_engine() -> None:
    """Close the pool if one was ever created (called at application shutdown)."""
    global _engine
    if _engine is not None:
        engine, _engine = _engine, None
        SessionLocal.configure(bind=None)
        await engine.dispose()


async def get_session() -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: one session per request, closed (and rolled back if still open) after."""
    get_engine()
    async with SessionLocal() as session:
        yield session
