"""Failure reports that explain the event loop trap."""

from __future__ import annotations

import pytest
from conftest import Project


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            "RuntimeError('Task got Future attached to a different loop')",
            "*was used on another*depend on `anyio_backend`*",
        ),
        (
            "RuntimeError('cannot perform operation: another operation is in progress')",
            "*Two tasks used one connection or one session*testkit_session_dependency*",
        ),
        ("RuntimeError('Event loop is closed')", "*had already been closed*"),
        ("RuntimeError('no running event loop')", "*asyncio only*db_session_sync*"),
    ],
)
def test_trap_errors_get_an_explanation(project: Project, error: str, expected: str) -> None:
    project.ini()
    project.module(
        "test_trap",
        f"""
        async def test_fails():
            raise {error}
        """,
    )
    result = project.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*anyio-fastapi-testkit: the event loop trap*", expected])


def test_other_failures_get_no_explanation(project: Project) -> None:
    project.ini()
    project.module("test_plain", "async def test_fails():\n    assert 1 == 2\n")
    result = project.run()
    result.assert_outcomes(failed=1)
    assert "event loop trap" not in result.stdout.str()


def test_a_real_pool_bound_to_another_loop_is_explained(project: Project) -> None:
    # The classic trap, for real: an asyncpg pool warmed on a loop of its own (asyncio.run in
    # a sync session fixture), then used on the kit's loop.
    project.ini()
    project.module(
        "test_real_trap",
        """
        import asyncio

        import pytest
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        @pytest.fixture(scope="session")
        def engine(database_url):
            engine = create_async_engine(str(database_url).replace("+psycopg", "+asyncpg"))

            async def warm():
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))

            asyncio.run(warm())
            return engine

        async def test_uses_engine(engine):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        """,
    )
    result = project.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*attached to a different loop*",
            "*anyio-fastapi-testkit: the event loop trap*",
            "*was used on another*",
        ]
    )
