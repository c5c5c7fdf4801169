"""One test's transaction on the shared connection: its session, its requests' turns on the
connection, and its end (rolled back, then the leak check), in the test's own call or in a
fixture's teardown.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from .._diagnostics.timeouts import Limit, real_move_on_after, timeout_failure
from .database import SAVEPOINT_MODE, SharedConnection
from .request_sessions import request_session_class


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
        # anyio's get_current_task() builds a TaskInfo on every call, on every request: on
        # asyncio the task object itself tells the tasks apart, for nothing.
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


class TestTransaction:
    """One test's use of the shared connection, and its session (a new one per test, so that
    nothing a test sets on it, an event listener say, reaches the next); rolled back by
    ``end()``.

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

    def __init__(self, database: SharedConnection, options: dict[str, Any]) -> None:
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

    def around_call(
        self, test: Callable[..., Awaitable[Any]], end_limit: tuple[float, str] | None, /
    ) -> Callable[..., Awaitable[Any]]:
        """``test``, the kit's wrapper of the async test, made to end this transaction in the
        same call (``run_in_transaction``) within ``end_limit``, the test's time limit, when
        the transaction ends in the test's call (``in_call``); else ``test`` itself.

        The transaction fixture puts this in the item's stash (``AROUND_CALL_KEY``) for the
        test's wrapper (``_diagnostics.watched``), which so needs no import of this module.
        """
        if not self.in_call:
            return test
        self.end_limit = end_limit
        return functools.partial(run_in_transaction, test, self)

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
            self._session = AsyncSession(
                bind=self.connection_now(), join_transaction_mode=SAVEPOINT_MODE, **self.options
            )
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

    async def end(self) -> Any:
        """End the test's database work: close the test's session and roll back (see
        ``SharedConnection.end_test``); return the leak check's rows for ``check_leaks``."""
        __tracebackhide__ = True
        if self.lock.busy:
            # A request still closing its session: a live server's request ends its
            # dependency after the client has its response. Its savepoint must be gone
            # before the rollback; one that never ends is left to the rollback.
            with real_move_on_after(REQUEST_END_WAIT):
                async with self.lock:
                    pass
        used = self._connection is not None
        session = self._session
        self._session = self._connection = None
        self._ended = True
        try:
            return await self.database.end_test(used, session)
        except BaseException:
            # A connection whose state is unknown must not carry into the next test.
            await self.database.discard_connection()
            raise

    def check_leaks(self, rows: Any) -> None:
        __tracebackhide__ = True
        self.database.leaks.check(rows)

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
        """``end()``, its reply awaited on the loop, within the test's time limit if it has
        one (``end_limit``): a rollback that hangs is cut off there, and its failure waits for
        ``finish_after_call()``; ``end()`` has dropped the connection, so the next test gets a
        new one."""
        __tracebackhide__ = True
        if self.end_limit is None:
            return await self.end()
        seconds, setting = self.end_limit
        limit = Limit(seconds)
        with limit.scope:
            limit.start()
            try:
                return await self.end()
            finally:
                limit.stop()
        # Cancelled by the limit: end() has discarded the connection; the next test opens one.
        self._end_error = timeout_failure(
            f"The end of the test's transaction (closing its clients, the rollback and the "
            f"leak check) did not finish within {seconds:g} s ({setting})",
            limit.report or "",
        )
        return None

    def finish_after_call(self) -> None:
        """In the fixture's teardown, after ``in_call``: report what ``end_call()`` found.

        When the call never ran (a later fixture failed or skipped), no code of the test ran
        on the loop since the set-up, so there is nothing to roll back: the test's session, if
        made, began no savepoint, and is dropped with what sync code may have added to it."""
        __tracebackhide__ = True
        self._closers.clear()  # the clients refer to the transaction: no cycle outlives it
        if not self._ended:
            self._session = None
            return
        if self._end_error is not None:
            raise self._end_error
        rows, self._leak_rows = self._leak_rows, None
        self.check_leaks(rows)
        if self._client_error is not None:
            raise self._client_error


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
