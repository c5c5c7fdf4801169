"""The override of the app's session dependency: one function per backend's database that
hands each request a session on the running test's transaction.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from .._diagnostics.timeouts import cancelled_with_the_test
from .._provisioning.run_databases import TestDatabases
from .database import SharedConnection
from .request_sessions import close_request_session
from .transaction import TestTransaction

OUTSIDE_A_TEST = (
    "The app's session dependency was called outside a test: the kit overrides it with "
    "sessions on the test's transaction only while a test that uses client, "
    "websocket_connect, live_server, db_session or db_connection runs."
)


_F = TypeVar("_F", bound=Callable[..., Any])


def signed(dependency: _F) -> _F:
    """``dependency`` with its signature computed once, for FastAPI.

    With overrides in place FastAPI analyses the overriding function again on every request
    (``inspect.signature(eval_str=True)``), and this module's annotations are strings, which
    it evaluates each time, on every request. A ready ``__signature__`` (no
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
            raise RuntimeError(OUTSIDE_A_TEST)
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
                # Run by FastAPI under a shield: the test's limit must still reach it.
                with cancelled_with_the_test():
                    await close_request_session(session)

    return signed(test_session_dependency)


class AsyncDatabase(SharedConnection):
    """The shared connection as the app sees it: with the running test's transaction, and the
    one override of the app's session dependency that hands out sessions on it."""

    def __init__(self, databases: TestDatabases, backend: str) -> None:
        super().__init__(databases, backend)
        # testkit_share_session: the app's requests get the test's own session.
        self.share_session = databases.settings.share_session
        # The test running now, for the one dependency override of the session: FastAPI
        # caches what it learns of a dependency by the function, for good, so a function per
        # test would keep every test's transaction alive (and miss that cache every test).
        self.current: TestTransaction | None = None
        self.dependency = _async_dependency(self)


def is_async_dependency(dependency: Callable[..., Any]) -> bool:
    return inspect.isasyncgenfunction(dependency) or inspect.iscoroutinefunction(dependency)
