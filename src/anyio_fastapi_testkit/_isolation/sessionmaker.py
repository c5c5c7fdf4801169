"""The app's own sessionmaker (``testkit_sessionmaker``): the test sessions' options taken
from it, and, for one test, its sessions joined to the test's transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .._core.backends import ASYNC_DRIVERS_ASYNCIO_ONLY
from .._core.errors import ConfigError
from .database import SAVEPOINT_MODE
from .transaction import TestTransaction

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
