"""The app's DI container: built at import from the environment, its bound method
``container.session`` is the session dependency, and its sessionmaker serves the services."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from bookshelf.container import container
from bookshelf.models import Author
from tests.factories import add_author


async def test_the_container_was_built_for_the_test_database(db_session: AsyncSession) -> None:
    # testkit_database_env set DATABASE_URL before the app, and its container, were imported.
    database = await db_session.scalar(text("SELECT current_database()"))
    assert container.engine.url.database == database
    assert container.settings.database_url.rsplit("/", 1)[1].split("?")[0] == database


async def test_the_container_sessionmaker_joins_the_test_transaction(
    db_session: AsyncSession,
) -> None:
    await add_author(db_session, "Flushed Not Committed")

    async with container.sessionmaker() as session:
        names = list(await session.scalars(select(Author.name)))

    assert names == ["Flushed Not Committed"]
