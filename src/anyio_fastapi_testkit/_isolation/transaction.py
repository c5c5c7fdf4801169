"""Per-test isolation: a connection in an outer transaction, savepoint-mode sessions on it.

Everything is made on first use, so a test that never touches the database (on trio, say)
never opens a connection, even when the app's session dependency is overridden.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import select
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import anyio
import pytest
from anyio.abc import TaskGroup
from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    AsyncTransaction,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction
from sqlalchemy.pool import NullPool

from .._core.backends import ASYNC_DRIVERS_ASYNCIO_ONLY
from .._core.clock import Timer, call_later, now
from .._core.errors import ConfigError
from .._diagnostics.queries import NOT_COUNTED
from .._diagnostics.timeouts import Limit, real_move_on_after, timeout_failure
from .._postgres.bounded import shut_down_socket
from .._provisioning.run_databases import TestDatabases

SAVEPOINT_MODE: Final = "create_savepoint"
# The running test's transaction, on its item, from the transaction fixture's set-up to its
# teardown.
TRANSACTION_KEY = pytest.StashKey["TestTransaction"]()
# The outer transaction is begun anew at the end of every test, so that now() (the start of
# the transaction) moves from test to test as in production; when no test has ended for this
# many seconds (tests that do not use the database in between), it is begun anew before the
# next test takes the connection, so that now() is never older than this at a test's start.
FRESH_FOR: Final = 1.0
# What AsyncDatabase.end_test(defer=True) returns when the leak check's rows are still on their
# way (read them with take_deferred()).
DEFERRED: Final = object()
# The app's objects must stay readable after its commit(): FastAPI serialises responses
# outside of an await, where an expired attribute cannot be loaded (MissingGreenlet).
DEFAULT_SESSION_OPTIONS: dict[str, Any] = {"expire_on_commit": False}
_NOT_SESSION_OPTIONS = ("bind", "binds", "join_transaction_mode")


def session_options(sessionmaker: Any | None) -> dict[str, Any]:
    """The test sessions' options: the app's own sessionmaker's, else expire_on_commit=False."""
    kw = getattr(sessionmaker, "kw", None)
    if not isinstance(kw, dict):
        return dict(DEFAULT_SESSION_OPTIONS)
    return {key: value for key, value in kw.items() if key not in _NOT_SESSION_OPTIONS}


def require_asyncio(backend: str, driver: str) -> None:
    __tracebackhide__ = True
    if backend != "asyncio":
        pytest.skip(ASYNC_DRIVERS_ASYNCIO_ONLY.format(driver=driver))


def _anyio_task_id() -> object:
    return anyio.get_current_task().id


# Seconds the end of a test waits for a request still inside its session (live server).
REQUEST_END_WAIT = 5.0


class TaskLock:
    """A lock its owning task may take again: a request that opens a second session on the
    test connection must not wait for itself."""

    def __init__(self, backend: str) -> None:
        # Uncontended (one request at a time, the usual case) it costs no trip through the loop.
        self._lock = anyio.Lock(fast_acquire=True)
        self._owner: object = None
        self._depth = 0
        # anyio's get_current_task() builds a TaskInfo each call (tens of microseconds per
        # request): on asyncio the task object itself tells the tasks apart.
        self._current_task: Callable[[], object] = (
            asyncio.current_task if backend == "asyncio" else _anyio_task_id
        )

    async def __aenter__(self) -> None:
        task = self._current_task()
        if self._owner != task:
            await self._lock.acquire()
            self._owner = task
        self._depth += 1

    async def __aexit__(self, *exc_info: object) -> None:
        self._depth -= 1
        if not self._depth:
            self._owner = None
            self._lock.release()

    @property
    def busy(self) -> bool:
        """Whether a task holds the lock (a request still inside its session)."""
        return self._owner is not None


class AsyncDatabase:
    """The async engine of one backend's session, and the one connection the tests share.

    The shared connection stays inside one outer transaction as far as SQLAlchemy knows. Each
    test works inside it and is undone by ``ROLLBACK; BEGIN``, sent through the driver in one
    message with the leak check: the server begins a new transaction for the next test, so
    that ``now()``, ``CURRENT_TIMESTAMP`` and ``server_default=func.now()`` move from test to
    test as in production, while SQLAlchemy's view of the connection (its transaction, the
    kept session's savepoint, begun again in the same message) stays true. One round trip per
    test, where a connection per test costs a pool checkout, BEGIN, ROLLBACK and the pool's
    reset. The driver keeps its prepared statements (see ``ScriptReply``).
    """

    def __init__(self, databases: TestDatabases, backend: str) -> None:
        self.databases = databases
        self.backend = backend
        self.driver = databases.settings.database_driver
        # testkit_share_session: the app's requests get the test's own session.
        self.share_session = databases.settings.share_session
        self._engine: AsyncEngine | None = None
        self._connection: AsyncConnection | None = None
        self._outer: AsyncTransaction | None = None
        # The driver's own connection under the shared one: the kit's statements between
        # tests go through it, skipping SQLAlchemy's per-statement work.
        self._raw: Any = None
        # Savepoints SQLAlchemy holds open on the shared connection (names, oldest first),
        # recorded by the engine's dialect (see _follow_savepoints).
        self._savepoints: list[str] = []
        self._savepoints_known = True
        # The tests' session, kept from test to test while it is in a state to be (see
        # end_test): a new one per test would cost a SAVEPOINT at its first statement and a
        # ROLLBACK TO SAVEPOINT at its close, two round trips per test.
        self._session: AsyncSession | None = None
        self._session_options: dict[str, Any] = {}
        # The test running now, for the one dependency override of the session: FastAPI
        # caches what it learns of a dependency by the function, for good, so a function per
        # test would keep every test's transaction alive (and miss that cache every test).
        self.current: TestTransaction | None = None
        self.dependency = _async_dependency(self)
        # The reply to the script that ended the last test, sent but not read yet (see
        # end_test(defer=True)); the connection takes no other statement until it is read.
        self._pending: ScriptReply | None = None
        # Set when that reply did not come or was an error: the connection is in an unknown
        # state, and the next test that needs it gets a new one.
        self._broken = False
        # When the server's transaction on the shared connection was last begun (the kit's
        # clock), for FRESH_FOR.
        self._began = 0.0

    async def engine(self) -> AsyncEngine:
        __tracebackhide__ = True
        require_asyncio(self.backend, self.driver)
        if self._engine is None:
            # Provisioning runs initdb, migrations, CREATE DATABASE: keep them off the loop.
            # Abandoned on cancel, so a hung provisioning fails the test (testkit_timeout)
            # instead of hanging it; the thread goes on, and the session's end waits for it.
            url = await anyio.to_thread.run_sync(self.databases.working_url, abandon_on_cancel=True)
            self._engine = create_async_engine(str(url))
            self._follow_savepoints(self._engine)
            self.databases.take_leak_baseline()
        return self._engine

    async def shared_connection(self) -> AsyncConnection:
        """The session's connection, inside its outer transaction (begun again if a test ended
        it, and begun anew on the server if it began more than ``FRESH_FOR`` seconds ago)."""
        __tracebackhide__ = True
        if self._broken or self._pending is not None:
            await self.discard_connection()
        connection = self._connection
        if connection is None or connection.closed or connection.invalidated:
            engine = await self.engine()
            connection = self._connection = await engine.connect()
            self._raw = (await connection.get_raw_connection()).driver_connection
            self._outer = None  # so the savepoint list is reset below
        current = self._outer_is_current(connection)
        if current and now() - self._began >= FRESH_FOR:
            kept = self._kept_savepoints()
            if kept is not None:
                try:
                    await self._end_and_count(kept, None, defer=False)
                except BaseException:
                    await self.discard_connection()  # in an unknown state
                    raise
                return connection
            current = False  # not as a test's end leaves it: begin again through SQLAlchemy
        if not current:
            await self.forget_session()
            await self.end_outer_transaction()
            self._savepoints.clear()  # the outer transaction took them with it
            self._savepoints_known = True
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
            and not self._broken
            and self._pending is None
            and not connection.closed
            and not connection.invalidated
            and self._outer_is_current(connection)
            and now() - self._began < FRESH_FOR
        ):
            return connection
        return None

    def _follow_savepoints(self, engine: AsyncEngine) -> None:
        """Record the savepoints SQLAlchemy begins and ends on the shared connection.

        Through the three savepoint methods of the engine's own dialect (SQLAlchemy's Dialect
        interface), wrapped on this engine's dialect instance only, rather than through
        connection events: with any event listener on it, a connection pays for event
        dispatch on every statement (about 14 us each, measured).
        """
        dialect = engine.sync_engine.dialect
        savepoints = self._savepoints
        begin, release, rollback = (
            dialect.do_savepoint,
            dialect.do_release_savepoint,
            dialect.do_rollback_to_savepoint,
        )

        def shared(connection: Connection) -> bool:
            current = self._connection
            return current is not None and connection is current.sync_connection

        def ended(name: str) -> None:
            # Releasing or rolling back to a savepoint ends it and those begun after it.
            if name in savepoints:
                del savepoints[savepoints.index(name) :]
            else:
                self._savepoints_known = False  # never keep the session on a guess

        def do_savepoint(connection: Connection, name: str) -> None:
            begin(connection, name)
            if shared(connection):
                savepoints.append(name)

        def do_release_savepoint(connection: Connection, name: str) -> None:
            release(connection, name)
            if shared(connection):
                ended(name)

        def do_rollback_to_savepoint(connection: Connection, name: str) -> None:
            rollback(connection, name)
            if shared(connection):
                ended(name)

        dialect.do_savepoint = do_savepoint  # type: ignore[method-assign]
        dialect.do_release_savepoint = do_release_savepoint  # type: ignore[method-assign]
        dialect.do_rollback_to_savepoint = do_rollback_to_savepoint  # type: ignore[method-assign]

    def test_session(self, options: dict[str, Any]) -> AsyncSession:
        """The session for a test on the shared connection (which must be open): the one
        kept from the last test if its options are the same, else a new one."""
        session = self._session
        if session is None or options != self._session_options:
            assert self._connection is not None
            session = AsyncSession(
                bind=self._connection, join_transaction_mode=SAVEPOINT_MODE, **options
            )
            self._session, self._session_options = session, dict(options)
        return session

    async def forget_session(self) -> None:
        """Close the kept session (through SQLAlchemy); the next test gets a new one."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def drop_pending_changes(self) -> None:
        """Forget what sync code added to the kept session without a trip to the database
        (``db_session.add()`` in a fixture of a test that then never ran)."""
        session = self._session
        if session is not None and (session.new or session.dirty or session.deleted):
            session.expunge_all()

    def _kept_savepoints(self) -> list[str] | None:
        """The savepoints to begin again after the rollback, for the kept session to stay
        as it is; None when the session (or a savepoint left open: the test's, or a request's
        session not closed) must be closed through SQLAlchemy instead."""
        savepoints, session = self._savepoints, self._session
        if not self._savepoints_known:
            return None
        if session is None:
            return [] if not savepoints else None
        sync = session.sync_session
        if not sync.is_active or sync.in_nested_transaction():
            return None  # a failed flush, or begin_nested() left open
        if not sync.in_transaction():
            return [] if not savepoints else None
        # Only the session's own savepoint, with a name SQLAlchemy made.
        if len(savepoints) == 1 and savepoints[0].isidentifier():
            return list(savepoints)
        return None

    def _reset_session(self, session: AsyncSession) -> None:
        """What a test may have changed on the kept session, as a new session would have it."""
        session.expunge_all()
        sync = session.sync_session
        options = self._session_options
        sync.autoflush = options.get("autoflush", True)
        sync.expire_on_commit = options.get("expire_on_commit", True)
        sync.info.clear()
        sync.info.update(options.get("info") or {})

    def _outer_is_current(self, connection: AsyncConnection) -> bool:
        outer = self._outer
        return (
            outer is not None
            and outer.is_active
            and connection.sync_connection is not None
            and connection.sync_connection.get_transaction() is outer.sync_transaction
        )

    async def end_test(self, used: bool, *, defer: bool = False) -> Any:
        """After a test: undo its work on the shared connection, and count its tables' rows
        for the leak check (``TestDatabases.check_leaks``), which this returns.

        The server's transaction is rolled back and a new one begun (``ROLLBACK; BEGIN``, also
        after a test that did not use the connection, so that the next test's ``now()`` is
        the time this one ended), under the same SQLAlchemy transaction. The test's session is
        kept for the next test when it is only inside its own savepoint, or in no transaction:
        its savepoint is begun again, empty, right after BEGIN, so SQLAlchemy's view of the
        connection stays true, and the session's objects are expunged. Rollback, BEGIN,
        savepoint and the leak check's count go to the server in one round trip with psycopg
        (two with asyncpg). Otherwise the session and the savepoints left open are rolled back
        through SQLAlchemy first. When the test ended the outer transaction itself
        (``db_connection.commit()`` or ``.rollback()``), whatever it began since is rolled back
        instead, and None is returned: the leak check then counts on the detector's own
        connection.

        With ``defer`` (psycopg), the script is sent but its reply is not waited for: this
        returns ``DEFERRED``, and ``take_deferred()``, outside the loop, returns the rows.
        """
        connection = self._connection
        if connection is None or not self._outer_is_current(connection):
            await self.forget_session()
            if used:
                await self.end_outer_transaction()
            return None
        # (A test that did not use the connection left it as the last test's end did.)
        kept = self._kept_savepoints()
        if used:
            if kept is None:
                # Savepoints left open (the test's own, its session's, a request's session
                # not closed): SQLAlchemy forgets them only when they are rolled back through
                # it, innermost first; then the session, whose savepoint is gone by then,
                # closes without SQL.
                nested = connection.get_nested_transaction()
                while nested is not None and nested.is_active:
                    await nested.rollback()
                    nested = connection.get_nested_transaction()
                await self.forget_session()
                if nested is not None:
                    # One SQLAlchemy would not roll back: end its whole transaction through
                    # it; the next test begins a new one.
                    await self.end_outer_transaction()
                    return None
                # None left: the server's new transaction has none either.
                self._savepoints.clear()
                self._savepoints_known = True
                kept = []
            elif self._session is not None:
                self._reset_session(self._session)
        query = self.databases.leak_query()
        return await self._end_and_count(kept, query, defer) or []

    async def _end_and_count(self, kept: list[str] | None, query: str | None, defer: bool) -> Any:
        """Send ``ROLLBACK; BEGIN`` and the ``kept`` savepoints (not when ``kept`` is None),
        then ``query``, the leak check's count (when not None), through the driver."""
        raw = self._raw
        asyncpg = type(raw).__module__.startswith("asyncpg")
        statements: list[str] = []
        if kept is not None:
            # (A server in no transaction, as a fresh connection is before its first statement,
            # would warn at a ROLLBACK; libpq's status 0 is IDLE.)
            if raw.is_in_transaction() if asyncpg else raw.pgconn.transaction_status != 0:
                statements.append("ROLLBACK")
            statements.append("BEGIN")
            statements += [f"SAVEPOINT {name}" for name in kept]
            self._began = now()
        script = "; ".join(statements)
        if asyncpg:
            # asyncpg returns no rows from a script of several statements.
            if script:
                await raw.execute(script)
            return None if query is None else await raw.fetch(query)
        if query is not None:
            script = f"{script}; {query}" if script else query
        if not script:
            return None
        reply = await ScriptReply.send(raw, script)
        if defer:
            self._pending = reply
            return DEFERRED
        return await reply.wait()

    def take_deferred(self, timeout: float | None) -> list[tuple[Any, ...]]:
        """The rows of the reply ``end_test(defer=True)`` left to read, waited for off the loop
        for at most ``timeout`` seconds (TimeoutError). After any error the connection is
        marked broken: the next test gets a new one."""
        reply, self._pending = self._pending, None
        if reply is None:
            raise RuntimeError("No reply of the tests' shared connection is left to read.")
        try:
            return reply.wait_blocking(timeout)
        except BaseException:
            self._broken = True
            raise

    async def end_outer_transaction(self) -> None:
        """Roll back whatever transaction is open on the shared connection."""
        self._outer = None
        if self._connection is not None and self._connection.in_transaction():
            await self._connection.rollback()

    async def discard_connection(self) -> None:
        """Forget a shared connection in an unknown state; the next test opens a new one."""
        connection, self._connection, self._outer = self._connection, None, None
        self._raw, self._session = None, None
        self._pending, self._broken = None, False
        if connection is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await connection.invalidate()
                finally:
                    await connection.close()

    async def dispose(self) -> None:
        try:
            if self._broken or self._pending is not None:
                await self.discard_connection()  # a reply still on its way, or none to come
            if self._connection is not None:
                await self.forget_session()
                await self.end_outer_transaction()
                await self._connection.close()
                self._connection = self._raw = None
        finally:
            if self._engine is not None:
                await self._engine.dispose()
                self._engine = None


class ScriptReply:
    """The reply to a script of statements sent on a psycopg connection through libpq
    (``psycopg.pq``): the rows of its last result that has rows, as text, or its first error.

    Not through ``connection.execute()``: psycopg drops its whole cache of prepared statements
    whenever a command's status is ROLLBACK, so every test would start with no prepared
    statement (the app's queries are prepared from their fifth run on). Undoing a test does
    not invalidate them (the server keeps prepared statements across transactions): a plan
    whose tables changed is planned again by the server itself. Nothing else uses the
    connection meanwhile: the test is over.

    The reply can be awaited on the loop (``wait``) or waited for outside it
    (``wait_blocking``): the kit sends the script that ends a test at the end of the test's
    call and reads the reply in the fixture's teardown, so that pytest's reporting of the call
    runs while the server works, instead of the test waiting for it.
    """

    __slots__ = ("_error", "_pgconn", "_rows")

    def __init__(self, pgconn: Any) -> None:
        self._pgconn = pgconn
        self._rows: list[tuple[Any, ...]] = []
        self._error: str | None = None

    @classmethod
    async def send(cls, connection: Any, script: str) -> ScriptReply:
        pgconn = connection.pgconn
        pgconn.send_query(script.encode())
        while pgconn.flush():
            await anyio.wait_writable(pgconn.socket)
        return cls(pgconn)

    def _take_arrived(self) -> bool:
        """Read what the server has sent so far; True once the whole reply is in."""
        from psycopg import pq

        pgconn = self._pgconn
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                return True
            if result.status == pq.ExecStatus.TUPLES_OK:
                self._rows = [
                    tuple(
                        (value or b"").decode()
                        for value in (
                            result.get_value(row, column) for column in range(result.nfields)
                        )
                    )
                    for row in range(result.ntuples)
                ]
            elif result.status != pq.ExecStatus.COMMAND_OK and self._error is None:
                self._error = (result.error_message or b"").decode(errors="replace").strip()
        return False

    def _outcome(self) -> list[tuple[Any, ...]]:
        if self._error is not None:
            raise RuntimeError(f"The kit's statements between two tests failed: {self._error}")
        return self._rows

    async def wait(self) -> list[tuple[Any, ...]]:
        while not self._take_arrived():
            await anyio.wait_readable(self._pgconn.socket)
        return self._outcome()

    def wait_blocking(self, timeout: float | None) -> list[tuple[Any, ...]]:
        """As ``wait()``, off the loop; raises TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else now() + timeout
        while not self._take_arrived():
            remaining = None if deadline is None else deadline - now()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            select.select([self._pgconn.socket], [], [], remaining)
        return self._outcome()


class TestTransaction:
    """One test's use of the shared connection, and its session; rolled back by ``end()``.

    Ended in one of two ways. In the test's own call (``in_call``, see ``run_in_transaction``):
    the kit's wrapper of the async test opens the task group before the test body and ends the
    transaction right after it, on the same trip through the loop; what that finds (the leak
    check's rows, an error) waits for ``finish_after_call()`` in the fixture's teardown, where
    pytest reports it. Otherwise by the closer fixture, whose set-up opens the task group and
    whose teardown ends the transaction: for tests the kit does not run itself, and for tests
    with async fixtures of their own after the kit's, which may use the transaction in their
    teardown, after the test's call.
    """

    __test__ = False

    def __init__(self, database: AsyncDatabase, options: dict[str, Any]) -> None:
        self.database = database
        self.options = options
        self.lock = TaskLock(database.backend)
        # Where the test's clients run the app calls of streamed responses (set while the
        # test runs by whichever opens it; read by the transport when a stream starts).
        self.task_group: TaskGroup | None = None
        self.in_call = False
        self._connection: AsyncConnection | None = None
        self._session: AsyncSession | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._ended = False
        self._leak_rows: Any = None
        self._end_error: BaseException | None = None
        self._client_error: BaseException | None = None
        # (seconds, setting): the test's time limit, which also bounds end_call()'s rollback,
        # as it bounds an async fixture's teardown.
        self.end_limit: tuple[float, str] | None = None

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Await ``closer`` first when the test ends (a client's open responses, say)."""
        self._closers.append(closer)

    def current_task_group(self) -> TaskGroup | None:
        return self.task_group

    def take_connection(self, connection: AsyncConnection) -> None:
        """Use ``connection``, the shared one as ``database.ready_connection()`` returned it."""
        self._connection = connection

    def connection_now(self) -> AsyncConnection:
        """The test's connection, once ``connection()`` has been awaited."""
        __tracebackhide__ = True
        if self._connection is None:
            raise RuntimeError(
                "The test's database connection is opened when the test's fixtures are set "
                "up, for the tests whose fixtures name db_session or db_connection; it was "
                "asked for later (request.getfixturevalue?). Name db_session or db_connection "
                "as an argument of the test or of one of its fixtures."
            )
        return self._connection

    def session_now(self) -> AsyncSession:
        """The test's session, once ``connection()`` has been awaited."""
        __tracebackhide__ = True
        if self._session is None:
            self.connection_now()
            self._session = self.database.test_session(self.options)
        return self._session

    async def connection(self) -> AsyncConnection:
        __tracebackhide__ = True
        if self._connection is None:
            self._connection = await self.database.shared_connection()
        return self._connection

    async def session(self) -> AsyncSession:
        __tracebackhide__ = True
        if self._session is None:
            await self.connection()
        return self.session_now()

    def open_session(self) -> AsyncSession | None:
        """The test's session if it was made already (sync code cannot make it)."""
        return self._session

    async def request_session(self) -> AsyncSession:
        """A new session for one request of the app, as the app's own sessionmaker would make
        it (the test's session options), on the test's connection and inside its transaction
        (savepoint mode): the app loads rows from the database, and its ``rollback()`` undoes
        only its own work. What the test's own session holds unflushed is flushed first, so
        that the request sees it. The caller closes it."""
        __tracebackhide__ = True
        connection = await self.connection()
        test_session = self._session
        if test_session is not None and (
            test_session.new or test_session.deleted or test_session.dirty
        ):
            await test_session.flush()
        options = dict(self.options)
        options["sync_session_class"] = request_session_class(
            options.get("sync_session_class", Session)
        )
        return AsyncSession(bind=connection, join_transaction_mode=SAVEPOINT_MODE, **options)

    async def close_clients(self) -> BaseException | None:
        """Close what was registered with ``on_close`` (the clients and their open
        responses); return the first error, for the test to see after the database's cleanup."""
        __tracebackhide__ = True
        closers, self._closers = self._closers, []
        first_error: BaseException | None = None
        for closer in closers:
            try:
                await closer()
            except BaseException as exc:  # every closer runs, and the database is cleaned up
                first_error = first_error or exc
        return first_error

    async def end(self, *, defer: bool = False) -> Any:
        """End the test's database work: roll back (keeping or closing the session, see
        ``AsyncDatabase.end_test``); return the leak check's rows for ``check_leaks``, or
        ``DEFERRED`` (with ``defer``) when they are to be read by ``finish_after_call()``."""
        __tracebackhide__ = True
        if self.lock.busy:
            # A request still closing its session: a live server's request ends its
            # dependency after the client has its response. Its savepoint must be gone
            # before the rollback; one that never ends is left to the rollback.
            with real_move_on_after(REQUEST_END_WAIT):
                async with self.lock:
                    pass
        used = self._connection is not None
        self._session = self._connection = None
        self._ended = True
        try:
            return await self.database.end_test(used, defer=defer)
        except BaseException:
            # A connection whose state is unknown must not carry into the next test.
            await self.database.discard_connection()
            raise

    def check_leaks(self, rows: Any) -> None:
        __tracebackhide__ = True
        self.database.databases.check_leaks(rows)

    async def close(self) -> None:
        """``end()``, then the leak check."""
        __tracebackhide__ = True
        self.check_leaks(await self.end())

    async def end_call(self, task_group: TaskGroup, failure: BaseException | None) -> None:
        """Right after the test body, in its task: close the clients and the task group, then
        ``end()``. Errors wait for ``finish_after_call()``, so that they are reported as the
        fixture's teardown errors, as when the closer fixture ends the transaction."""
        __tracebackhide__ = True
        self._client_error = await self.close_clients()
        self.task_group = None
        try:
            # Only a cancellation goes into the group: the test's own failure would come out
            # of it wrapped in an exception group.
            if isinstance(failure, anyio.get_cancelled_exc_class()):
                await task_group.__aexit__(type(failure), failure, failure.__traceback__)
            else:
                await task_group.__aexit__(None, None, None)
        except Exception as exc:  # an app call of a stream that failed
            self._client_error = self._client_error or exc
        try:
            self._leak_rows = await self._end_within_limit()
        except Exception as exc:
            self._end_error = exc

    async def _end_within_limit(self) -> Any:
        # The rollback's reply is read in the teardown (finish_after_call), while pytest
        # reports the call in between: one wait for the server less per test.
        __tracebackhide__ = True
        if self.end_limit is None:
            return await self.end(defer=True)
        seconds, setting = self.end_limit
        limit = Limit(seconds)
        with limit.scope:
            limit.start()
            try:
                return await self.end(defer=True)
            finally:
                limit.stop()
        # Cancelled by the limit: end() has discarded the connection; the next test opens one.
        self._end_error = self._end_timeout(seconds, setting, limit.report or "")
        return None

    @staticmethod
    def _end_timeout(seconds: float, setting: str, report: str) -> BaseException:
        return timeout_failure(
            f"The end of the test's transaction (closing its clients, the rollback and the "
            f"leak check) did not finish within {seconds:g} s ({setting})",
            report,
        )

    def _take_deferred_rows(self) -> Any:
        """The leak check's rows that ``end(defer=True)`` left on their way, read now."""
        __tracebackhide__ = True
        seconds, setting = self.end_limit or (None, "")
        try:
            return self.database.take_deferred(seconds)
        except TimeoutError:
            assert seconds is not None
            raise self._end_timeout(
                seconds,
                setting,
                "the kit, outside the loop (in the test's teardown), for the server's reply to "
                "the rollback on the tests' shared connection; that connection is dropped and "
                "the next test gets a new one",
            ) from None

    def finish_after_call(self) -> None:
        """In the fixture's teardown, after ``in_call``: report what ``end_call()`` found.

        When the call never ran (a later fixture failed or skipped), no code of the test ran
        on the loop since the set-up, so there is nothing to roll back; only what sync code
        may have put in the kept session is dropped."""
        __tracebackhide__ = True
        self._closers.clear()  # the clients refer to the transaction: no cycle outlives it
        if not self._ended:
            self.database.drop_pending_changes()
            return
        if self._end_error is not None:
            raise self._end_error
        rows, self._leak_rows = self._leak_rows, None
        if rows is DEFERRED:
            rows = self._take_deferred_rows()
        self.check_leaks(rows)
        if self._client_error is not None:
            raise self._client_error


_OUTSIDE_A_TEST = (
    "The app's session dependency was called outside a test: the kit overrides it with "
    "sessions on the test's transaction only while a test that uses client, "
    "websocket_connect, live_server, db_session or db_connection runs."
)


# True on a request's session once it wrote (flushed, or executed anything but a SELECT) in
# its transaction; see close_request_session.
_WROTE: Final = "_testkit_wrote"
_REQUEST_CLASSES: dict[type[Session], type[Session]] = {}


def _note_flush(session: Session, flush_context: object) -> None:
    setattr(session, _WROTE, True)


def _note_execute(state: ORMExecuteState) -> None:
    if not state.is_select:
        setattr(state.session, _WROTE, True)


def _note_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the session's own, not a begin_nested() inside it
        setattr(session, _WROTE, False)


def request_session_class(base: type[Session]) -> type[Session]:
    """``base`` (the app's ``sync_session_class``, else ``Session``) made to note whether a
    session wrote in its transaction; its events are those of this subclass only."""
    cls = _REQUEST_CLASSES.get(base)
    if cls is None:
        cls = type(f"Request{base.__name__}", (base,), {_WROTE: False, "__module__": __name__})
        event.listen(cls, "after_flush", _note_flush)
        event.listen(cls, "do_orm_execute", _note_execute)
        event.listen(cls, "after_transaction_end", _note_end)
        _REQUEST_CLASSES[base] = cls
    return cls


def _only_read(session: Session) -> bool:
    """Whether ``session`` is in a transaction in which it only read: nothing flushed or
    pending, nothing executed but SELECTs, no ``begin_nested()`` of its own left open."""
    return (
        session.in_transaction()
        and session.is_active
        and not session.in_nested_transaction()
        and not getattr(session, _WROTE, True)
        and not (session.new or session.deleted or session.dirty)
    )


async def close_request_session(session: AsyncSession) -> None:
    """Close a request's session. One that only read in its transaction has its savepoint
    released (a commit) rather than rolled back: the same for its own work, and it keeps what
    other sessions on the test's connection committed after the savepoint began (a background
    task's, a service's), which nothing of the request would undo in production."""
    __tracebackhide__ = True
    try:
        if _only_read(session.sync_session):
            await session.commit()
    finally:
        await session.close()


def close_sync_request_session(session: Session) -> None:
    """The sync twin of ``close_request_session``."""
    __tracebackhide__ = True
    try:
        if _only_read(session):
            session.commit()
    finally:
        session.close()


_F = TypeVar("_F", bound=Callable[..., Any])


def _signed(dependency: _F) -> _F:
    """``dependency`` with its signature computed once, for FastAPI.

    With overrides in place FastAPI analyses the overriding function again on every request
    (``inspect.signature(eval_str=True)``), and this module's annotations are strings, which
    it evaluates each time: tens of microseconds per request. A ready ``__signature__`` (no
    parameters, nothing to evaluate) is what inspect returns first.
    """
    dependency.__signature__ = inspect.Signature()  # type: ignore[attr-defined]
    return dependency


def _async_dependency(database: AsyncDatabase) -> Callable[[], AsyncIterator[AsyncSession]]:
    """The FastAPI dependency yielding, one request at a time, a session of the request's own
    on the running test's transaction (closed after the request), or the test's own session
    with ``testkit_share_session``."""

    async def test_session_dependency() -> AsyncIterator[AsyncSession]:
        __tracebackhide__ = True
        transaction = database.current
        if transaction is None:
            raise RuntimeError(_OUTSIDE_A_TEST)
        # Concurrent requests take turns on the test's one connection, each holding the lock
        # for its whole request: the savepoints of the sessions on one connection must nest
        # (releasing one also ends those begun after it), and one shared session allows no
        # concurrent operations. The lock is re-entrant within a task, so that a request
        # that opens a second session on the connection does not wait for itself.
        async with transaction.lock:
            if database.share_session:
                yield await transaction.session()
                return
            session = await transaction.request_session()
            try:
                yield session
            finally:
                await close_request_session(session)

    return _signed(test_session_dependency)


async def run_in_transaction(
    test: Callable[..., Awaitable[Any]], transaction: TestTransaction, /, **kwargs: Any
) -> Any:
    """Run an async test with its transaction ended on the same trip through the loop.

    Saves the test two trips into the loop (an async fixture's set-up and teardown) and
    keeps it out of reference cycles: anyio ends an async generator fixture by catching its
    ``StopAsyncIteration``, whose traceback holds the frame that holds the fixture's task,
    which holds the exception, so every such fixture leaves the garbage collector a cycle.
    """
    __tracebackhide__ = True
    task_group = anyio.create_task_group()
    await task_group.__aenter__()
    transaction.task_group = task_group
    failure: BaseException | None = None
    try:
        return await test(**kwargs)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        await transaction.end_call(task_group, failure)


def _sync_dependency(database: SyncDatabase) -> Callable[[], Iterator[Session]]:
    """The sync twin of ``_async_dependency``, for sync (``def``) dependencies: a session of
    the request's own on ``db_session_sync``'s transaction, or that session itself with
    ``testkit_share_session``."""

    def test_session_dependency() -> Iterator[Session]:
        __tracebackhide__ = True
        transaction = database.current
        if transaction is None:
            raise RuntimeError(_OUTSIDE_A_TEST)
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

    return _signed(test_session_dependency)


class SyncDatabase:
    """The sync (psycopg) engine for ``db_session_sync``; usable on every backend."""

    def __init__(self, databases: TestDatabases) -> None:
        self.databases = databases
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
            self.databases.take_leak_baseline()
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


def check_sessionmaker(maker: Any, path: str) -> async_sessionmaker[Any]:
    __tracebackhide__ = True
    if not isinstance(maker, async_sessionmaker):
        raise ConfigError(
            f"testkit_sessionmaker = {path!r} is a {type(maker).__name__}, not a SQLAlchemy "
            "async_sessionmaker. Name the object your code calls to open sessions "
            '(e.g. "myproject.db:SessionLocal").'
        )
    return maker


@contextmanager
def bound_sessionmaker(
    maker: async_sessionmaker[Any] | None, transaction: TestTransaction
) -> Iterator[None]:
    """For one test, make the app's sessionmaker hand out sessions joined to the test's
    transaction (savepoint mode); restore its configuration afterwards. On asyncio the
    transaction must hold its connection already."""
    __tracebackhide__ = True
    if maker is None:
        yield
        return
    saved_kw, saved_class = dict(maker.kw), maker.class_
    if transaction.database.backend == "asyncio":
        maker.configure(bind=transaction.connection_now(), join_transaction_mode=SAVEPOINT_MODE)
    else:
        reason = ASYNC_DRIVERS_ASYNCIO_ONLY.format(driver=transaction.database.driver)

        def skip_on_this_backend(**kw: Any) -> AsyncSession:
            __tracebackhide__ = True
            pytest.skip(reason)

        maker.class_ = skip_on_this_backend  # type: ignore[assignment]
    try:
        yield
    finally:
        maker.kw.clear()
        maker.kw.update(saved_kw)
        maker.class_ = saved_class


def is_async_dependency(dependency: Callable[..., Any]) -> bool:
    return inspect.isasyncgenfunction(dependency) or inspect.iscoroutinefunction(dependency)
