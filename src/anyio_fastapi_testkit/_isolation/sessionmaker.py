"""The app's own sessionmaker (``testkit_sessionmaker``): the test sessions' options taken
from it, and, for one test, its sessions joined to the test's transaction, their cleanup
cancelled with the test at its time limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction, async_sessionmaker

from .._core.backends import ASYNC_DRIVERS_ASYNCIO_ONLY
from .._core.errors import ConfigError
from .._diagnostics.timeouts import cancelled_with_the_test
from .database import SAVEPOINT_MODE
from .transaction import TestTransaction

# The app's objects must stay readable after its commit(): FastAPI serialises responses
# outside of an await, where an expired attribute cannot be loaded (MissingGreenlet).
DEFAULT_SESSION_OPTIONS: dict[str, Any] = {"expire_on_commit": False}
_NOT_SESSION_OPTIONS = ("bind", "binds", "join_transaction_mode")
_LIMITED_CLASSES: dict[type[AsyncSession], type[AsyncSession]] = {}


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


class _LimitedTransaction(AsyncSessionTransaction):
    """A ``begin()``/``begin_nested()`` block whose end is cancelled with the test (see
    ``_CleanupLimited``)."""

    __slots__ = ()

    async def commit(self) -> None:
        __tracebackhide__ = True
        with cancelled_with_the_test():
            await super().commit()

    async def rollback(self) -> None:
        __tracebackhide__ = True
        with cancelled_with_the_test():
            await super().rollback()

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        __tracebackhide__ = True
        with cancelled_with_the_test():
            await super().__aexit__(type_, value, traceback)


class _CleanupLimited(AsyncSession):
    """What a session of the app's own sessionmaker gets for one test: its commit, rollback
    and close (also those of ``async with``, of ``begin()`` blocks and of the sessionmaker's
    ``begin()``) cancelled with the test at its time limit.

    The app runs them where FastAPI shields them from cancellation (after a yield
    dependency's ``yield``), which the test's limit does not reach: on a server that stopped
    answering they would wait for ever, and the test, and the run, with them (the kit's own
    request sessions: see ``dependency.py``). ``AsyncSession.__aexit__`` runs ``close()`` in
    a task of its own, shielded by ``asyncio.shield``; that task inherits the test's context,
    and the limit cancels it through the scope its ``close()`` opens.
    """

    async def commit(self) -> None:
        __tracebackhide__ = True
        with cancelled_with_the_test():
            await super().commit()

    async def rollback(self) -> None:
        __tracebackhide__ = True
        with cancelled_with_the_test():
            await super().rollback()

    async def close(self) -> None:  # also aclose() and __aexit__
        __tracebackhide__ = True
        with cancelled_with_the_test():
            await super().close()

    async def reset(self) -> None:
        __tracebackhide__ = True
        with cancelled_with_the_test():
            await super().reset()

    async def invalidate(self) -> None:
        __tracebackhide__ = True
        with cancelled_with_the_test():
            await super().invalidate()

    def begin(self) -> AsyncSessionTransaction:  # also async_sessionmaker.begin()
        return _LimitedTransaction(self)

    def begin_nested(self) -> AsyncSessionTransaction:
        return _LimitedTransaction(self, nested=True)


def cleanup_limited_class(base: type[AsyncSession]) -> type[AsyncSession]:
    """``base`` (the app's sessionmaker's ``class_``) with its cleanup cancelled with the
    test (see ``_CleanupLimited``): a subclass, so that the app's ``isinstance`` checks
    hold, of the same name, made once per class."""
    cls = _LIMITED_CLASSES.get(base)
    if cls is None:
        namespace = {"__module__": __name__, "__qualname__": base.__qualname__}
        cls = type(base.__name__, (_CleanupLimited, base), namespace)
        _LIMITED_CLASSES[base] = cls
    return cls


@contextmanager
def bound_sessionmaker(
    maker: async_sessionmaker[Any] | None, transaction: TestTransaction
) -> Iterator[None]:
    """For one test, make the app's sessionmaker hand out sessions joined to the test's
    transaction (savepoint mode), whose cleanup the test's time limit cancels; restore its
    configuration afterwards. On asyncio the transaction must hold its connection already."""
    __tracebackhide__ = True
    if maker is None:
        yield
        return
    saved_kw, saved_class = dict(maker.kw), maker.class_
    if transaction.database.backend == "asyncio":
        maker.configure(bind=transaction.connection_now(), join_transaction_mode=SAVEPOINT_MODE)
        if isinstance(saved_class, type) and issubclass(saved_class, AsyncSession):
            maker.class_ = cleanup_limited_class(saved_class)
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
