"""The sync variant, for sync (``def``) endpoints and dependencies: ``db_session_sync``'s own
psycopg connection per test, in a transaction rolled back after the test, on every backend.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Connection, create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from .._core.clock import Timer, call_later
from .._diagnostics.timeouts import timeout_failure
from .._postgres.bounded import shut_down_socket
from .._provisioning.run_databases import TestDatabases
from .database import SAVEPOINT_MODE
from .dependency import OUTSIDE_A_TEST, signed
from .leaks import leak_check
from .request_sessions import close_sync_request_session, request_session_class


def _sync_dependency(database: SyncDatabase) -> Callable[[], Iterator[Session]]:
    """The sync twin of ``_async_dependency``, for sync (``def``) dependencies: a session of
    the request's own on ``db_session_sync``'s transaction, or that session itself with
    ``testkit_share_session``."""

    def test_session_dependency() -> Iterator[Session]:
        __tracebackhide__ = True
        transaction = database.current
        if transaction is None:
            raise RuntimeError(OUTSIDE_A_TEST)
        # FastAPI runs sync dependencies in worker threads: take turns, as the async one.
        with transaction.lock:
            if database.share_session:
                yield transaction.session()
                return
            session = transaction.request_session()
            try:
                yield session
            finally:
                close_sync_request_session(session)

    return signed(test_session_dependency)


class SyncDatabase:
    """The sync (psycopg) engine for ``db_session_sync``; usable on every backend."""

    def __init__(self, databases: TestDatabases) -> None:
        self.databases = databases
        self.leaks = leak_check(databases)
        self.share_session = databases.settings.share_session  # as AsyncDatabase's
        self._engine: Engine | None = None
        self.current: SyncTestTransaction | None = None  # as AsyncDatabase.current
        self.dependency = _sync_dependency(self)

    def engine(self) -> Engine:
        __tracebackhide__ = True
        if self._engine is None:
            url = str(self.databases.working_url())
            sync_url = make_url(url.replace("+asyncpg", "+psycopg", 1))
            # Bounded, as the kit's admin connections: a server that accepts the TCP
            # connection and never answers would hang the test otherwise.
            connect_args = {} if "connect_timeout" in sync_url.query else {"connect_timeout": 5}
            self._engine = create_engine(sync_url, poolclass=NullPool, connect_args=connect_args)
            self.leaks.take_baseline()
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


class SyncTestTransaction:
    """The sync twin of TestTransaction, for sync endpoints and dependencies."""

    __test__ = False

    def __init__(self, database: SyncDatabase, options: dict[str, Any]) -> None:
        self.database = database
        self.options = options
        self.lock = threading.Lock()
        self._connection: Connection | None = None
        self._session: Session | None = None
        self._limit: tuple[Timer, float, str] | None = None
        self.cut = False  # the limit passed: the connection's socket was shut down

    def limit(self, seconds: float, setting: str) -> None:
        """Bound the test's waits on the server: after ``seconds``, shut the connection's
        socket down, so that a call blocked on a server that stopped answering fails at once
        (a blocked sync call cannot be cancelled any other way)."""
        self._limit = (call_later(seconds, self._cut), seconds, setting)

    def _cut(self) -> None:
        # On the watchdog thread. Shutting a socket down is safe while another thread reads
        # it (the read returns at once); closing its descriptor would not be.
        connection = self._connection
        if connection is None:
            return
        self.cut = True
        with contextlib.suppress(Exception):
            shut_down_socket(connection.connection.dbapi_connection)

    def connection(self) -> Connection:
        __tracebackhide__ = True
        if self._connection is None:
            connection = self.database.engine().connect()
            connection.begin()
            self._connection = connection
        return self._connection

    def session(self) -> Session:
        __tracebackhide__ = True
        if self._session is None:
            self._session = Session(
                bind=self.connection(), join_transaction_mode=SAVEPOINT_MODE, **self.options
            )
        return self._session

    def request_session(self) -> Session:
        """As ``TestTransaction.request_session``: a new session on the test's connection
        for one request, after a flush of the test's own session."""
        __tracebackhide__ = True
        connection = self.connection()
        test_session = self._session
        if test_session is not None and (
            test_session.new or test_session.deleted or test_session.dirty
        ):
            test_session.flush()
        return request_session_class(Session)(
            bind=connection, join_transaction_mode=SAVEPOINT_MODE, **self.options
        )

    def close(self) -> None:
        __tracebackhide__ = True
        if self._limit is not None:
            self._limit[0].cancel()
        session, connection = self._session, self._connection
        self._session = self._connection = None
        if self.cut:
            if connection is not None:
                connection.invalidate()  # its socket is shut: nothing to roll back on
            assert self._limit is not None
            _, seconds, setting = self._limit
            raise timeout_failure(
                f"The test did not finish within {seconds:g} s ({setting}): the kit shut down "
                "its sync connection to the server (db_session_sync, db_connection_sync), so "
                "that a call waiting on the server failed instead of hanging",
                "",
            )
        try:
            if session is not None:
                session.close()
        finally:
            if connection is not None:
                try:
                    if connection.in_transaction():
                        connection.rollback()
                finally:
                    connection.close()
