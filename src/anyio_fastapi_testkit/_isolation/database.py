"""The async database of one backend's session: its engine and the one connection the tests
share, inside an outer transaction that the server rolls back and begins anew after each test.

Everything is made on first use, so a test that never touches the database (on trio, say)
never opens a connection, even when the app's session dependency is overridden.
"""

from __future__ import annotations

from typing import Any, Final

import anyio
import pytest
from psycopg import pq
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    AsyncTransaction,
    create_async_engine,
)

from .._core.backends import ASYNC_DRIVERS_ASYNCIO_ONLY
from .._core.clock import now
from .._diagnostics.queries import NOT_COUNTED
from .._provisioning.run_databases import TestDatabases
from .leaks import leak_check
from .script import run_script

SAVEPOINT_MODE: Final = "create_savepoint"
# The outer transaction is begun anew at the end of every test, so that now() (the start of
# the transaction) moves from test to test as in production; when no test has ended for this
# many seconds (tests that do not use the database in between), it is begun anew before the
# next test takes the connection, so that now() is never older than this at a test's start.
FRESH_FOR: Final = 1.0
_IDLE: Final = pq.TransactionStatus.IDLE


def require_asyncio(backend: str, driver: str) -> None:
    __tracebackhide__ = True
    if backend != "asyncio":
        pytest.skip(ASYNC_DRIVERS_ASYNCIO_ONLY.format(driver=driver))


class SharedConnection:
    """The async engine of one backend's session, and the one connection the tests share.

    The shared connection stays inside one outer transaction as far as SQLAlchemy knows. Each
    test works inside it and is undone by ``ROLLBACK; BEGIN``, sent through the driver in one
    message with the leak check: the server begins a new transaction for the next test, so
    that ``now()``, ``CURRENT_TIMESTAMP`` and ``server_default=func.now()`` move from test to
    test as in production, while SQLAlchemy's view of the connection (its transaction, with
    no savepoint left open) stays true. One round trip per test, where a connection per test
    costs a pool checkout, BEGIN, ROLLBACK and the pool's reset. The driver keeps its prepared
    statements (see ``run_script``).
    """

    def __init__(self, databases: TestDatabases, backend: str) -> None:
        self.databases = databases
        self.leaks = leak_check(databases)
        self.backend = backend
        self.driver = databases.settings.database_driver
        self._engine: AsyncEngine | None = None
        self._connection: AsyncConnection | None = None
        self._outer: AsyncTransaction | None = None
        # The driver's own connection under the shared one: the kit's statements between
        # tests go through it, skipping SQLAlchemy's per-statement work.
        self._raw: Any = None
        # When the server's transaction on the shared connection was last begun (the kit's
        # clock), for FRESH_FOR.
        self._began = 0.0
        # True while end_test() has SQLAlchemy forget the savepoints a test left open (see
        # _drop_savepoints_with_the_rollback).
        self._ending = False

    async def engine(self) -> AsyncEngine:
        __tracebackhide__ = True
        require_asyncio(self.backend, self.driver)
        if self._engine is None:
            # Provisioning runs initdb, migrations, CREATE DATABASE: keep them off the loop.
            # Abandoned on cancel, so a hung provisioning fails the test (testkit_timeout)
            # instead of hanging it; the thread goes on, and the session's end waits for it.
            url = await anyio.to_thread.run_sync(self.databases.working_url, abandon_on_cancel=True)
            self._engine = create_async_engine(str(url))
            self._drop_savepoints_with_the_rollback(self._engine)
            self.leaks.take_baseline()
        return self._engine

    async def shared_connection(self) -> AsyncConnection:
        """The session's connection, inside its outer transaction (begun again if a test ended
        it, and begun anew on the server if it began more than ``FRESH_FOR`` seconds ago)."""
        __tracebackhide__ = True
        connection = self._connection
        if connection is None or connection.closed or connection.invalidated:
            engine = await self.engine()
            connection = self._connection = await engine.connect()
            self._raw = (await connection.get_raw_connection()).driver_connection
            self._outer = None  # so that its transaction is begun below
        current = self._outer_is_current(connection)
        if current and now() - self._began >= FRESH_FOR:
            if connection.get_nested_transaction() is None:
                try:
                    await self._end_and_count(None)
                except BaseException:
                    await self.discard_connection()  # in an unknown state
                    raise
                return connection
            current = False  # not as a test's end leaves it: begin again through SQLAlchemy
        if not current:
            await self.end_outer_transaction()
            self._outer = await connection.begin()
            # A statement, for the driver to begin the transaction now: asyncpg's adapter
            # begins it at the first statement, and refuses to once the server is in the one
            # the end of a test begins.
            await connection.exec_driver_sql("SELECT 1", execution_options=NOT_COUNTED)
            self._began = now()
        return connection

    def ready_connection(self) -> AsyncConnection | None:
        """The shared connection if it is open and in a transaction begun less than
        ``FRESH_FOR`` seconds ago, so that a test can take it without a trip through the loop;
        else None (``shared_connection()`` opens it, or begins its transaction anew)."""
        connection = self._connection
        if (
            connection is not None
            and not connection.closed
            and not connection.invalidated
            and self._outer_is_current(connection)
            and now() - self._began < FRESH_FOR
        ):
            return connection
        return None

    def _drop_savepoints_with_the_rollback(self, engine: AsyncEngine) -> None:
        """Have SQLAlchemy roll back the shared connection's savepoints at the end of a test
        without sending ``ROLLBACK TO SAVEPOINT``: the ``ROLLBACK`` that follows in the kit's
        script takes them with it.

        Through the engine's own dialect (``Dialect.do_rollback_to_savepoint``, SQLAlchemy's
        Dialect interface), wrapped on this engine's dialect instance only. Not for the round
        trip alone: psycopg drops its whole cache of prepared statements when a command's
        status is ROLLBACK, which is the status of ``ROLLBACK TO SAVEPOINT`` too (see
        ``run_script``; ``tests/test_shared_connection.py`` checks that they survive).
        """
        dialect = engine.sync_engine.dialect
        rollback = dialect.do_rollback_to_savepoint

        def do_rollback_to_savepoint(connection: Connection, name: str) -> None:
            shared = self._connection
            if not (self._ending and shared is not None and connection is shared.sync_connection):
                rollback(connection, name)

        dialect.do_rollback_to_savepoint = do_rollback_to_savepoint  # type: ignore[method-assign]

    def _outer_is_current(self, connection: AsyncConnection) -> bool:
        outer = self._outer
        return (
            outer is not None
            and outer.is_active
            and connection.sync_connection is not None
            and connection.sync_connection.get_transaction() is outer.sync_transaction
        )

    async def end_test(self, used: bool, session: AsyncSession | None) -> Any:
        """After a test: close its ``session``, undo its work on the shared connection, and
        count its tables' rows for the leak check (``LeakCheck.check``), which this
        returns.

        Savepoints left open (the test's session's, its own ``begin_nested()``, a request's
        session not closed) are rolled back through SQLAlchemy, innermost first, so that it
        forgets them, without SQL (the ``ROLLBACK`` takes them on the server); then the
        session, whose savepoint is gone by then, closes without SQL.
        The server's transaction is then rolled back and a new one begun (``ROLLBACK; BEGIN``,
        also after a test that did not use the connection, so that the next test's ``now()``
        is the time this one ended), under the same SQLAlchemy transaction; rollback, BEGIN
        and the leak check's count go to the server in one round trip with psycopg (two with
        asyncpg). When the test ended the outer transaction itself (``db_connection.commit()``
        or ``.rollback()``), or left a savepoint SQLAlchemy would not roll back, whatever it
        began since is rolled back instead, and None is returned: the leak check then counts
        on the detector's own connection.
        """
        connection = self._connection
        if connection is None or not self._outer_is_current(connection):
            if session is not None:
                await session.close()
            if used:
                await self.end_outer_transaction()
            return None
        # (A test that did not use the connection left it as the last test's end did.)
        if used:
            self._ending = True
            try:
                nested = connection.get_nested_transaction()
                while nested is not None and nested.is_active:
                    await nested.rollback()
                    nested = connection.get_nested_transaction()
                if session is not None:
                    await session.close()
            finally:
                self._ending = False
            if nested is not None:
                # One SQLAlchemy would not roll back: end its whole transaction through it;
                # the next test begins a new one.
                await self.end_outer_transaction()
                return None
        query = self.leaks.query()
        return await self._end_and_count(query) or []

    async def _end_and_count(self, query: str | None) -> Any:
        """Send ``ROLLBACK; BEGIN``, then ``query``, the leak check's count (when not None),
        through the driver."""
        raw = self._raw
        asyncpg = type(raw).__module__.startswith("asyncpg")
        statements: list[str] = []
        # (A server in no transaction, as a fresh connection is before its first statement,
        # would warn at a ROLLBACK.)
        if raw.is_in_transaction() if asyncpg else raw.info.transaction_status != _IDLE:
            statements.append("ROLLBACK")
        statements.append("BEGIN")
        self._began = now()
        script = "; ".join(statements)
        if asyncpg:
            # asyncpg returns no rows from a script of several statements.
            await raw.execute(script)
            return None if query is None else await raw.fetch(query)
        if query is not None:
            script = f"{script}; {query}"
        return await run_script(raw, script)

    async def end_outer_transaction(self) -> None:
        """Roll back whatever transaction is open on the shared connection."""
        self._outer = None
        if self._connection is not None and self._connection.in_transaction():
            await self._connection.rollback()

    async def discard_connection(self) -> None:
        """Forget a shared connection in an unknown state; the next test opens a new one."""
        connection, self._connection, self._outer = self._connection, None, None
        self._raw = None
        if connection is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await connection.invalidate()
                finally:
                    await connection.close()

    async def dispose(self) -> None:
        try:
            if self._connection is not None:
                await self.end_outer_transaction()
                await self._connection.close()
                self._connection = self._raw = None
        finally:
            if self._engine is not None:
                await self._engine.dispose()
                self._engine = None
