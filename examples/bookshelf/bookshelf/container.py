"""The app's dependencies, built once at import by a small hand-written container.

Routes ask for ``Depends(container.session)``; services that work outside a request use
``container.sessionmaker``. Building the container creates the engine, which connects only
when a session first needs a connection: importing the app needs no database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from .settings import Settings


class Container:
    """Settings, engine and sessionmaker of one running app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_async_engine(settings.database_url, pool_pre_ping=True)
        # expire_on_commit=False: handlers commit and then return ORM objects that FastAPI
        # turns into JSON synchronously; an expired attribute there would need database IO
        # outside an await.
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def session(self) -> AsyncIterator[AsyncSession]:
        """FastAPI dependency: one session per request, closed (rolled back if still open) after."""
        async with self.sessionmaker() as session:
            yield session

    async def dispose(self) -> None:
        """Close the engine's pool (at application shutdown)."""
        await self.engine.dispose()


container = Container(Settings.from_env())
