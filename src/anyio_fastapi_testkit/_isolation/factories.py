"""Test-data factories (polyfactory, factory-boy) that persist through the test's session.

Both libraries keep their session on the factory class, so a project's factories usually
point at the production sessionmaker, or at nothing. For one test the kit points them at the
test's session instead, and puts back exactly what was there afterwards, also when the test
fails. Neither library is a dependency: each is imported only when a factory needs it.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from .._core.errors import ConfigError
from .._core.imports import import_from_path

if TYPE_CHECKING:
    from .transaction import TestTransaction

INSTALL_HINT = 'pip install "anyio-fastapi-testkit[factories]"'
# The class attributes polyfactory reads to persist; saved and restored as they were.
_POLYFACTORY_ATTRIBUTES = (
    "__async_session__",
    "__session__",
    "__async_persistence__",
    "__sync_persistence__",
)
_MISSING = object()


def _polyfactory_base() -> type | None:
    try:
        from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory
    except ImportError:
        return None
    return SQLAlchemyFactory


def _factory_boy_base() -> type | None:
    try:
        from factory.alchemy import SQLAlchemyModelFactory
    except ImportError:
        return None
    return SQLAlchemyModelFactory


def _is_concrete(cls: type, polyfactory: type | None, factory_boy: type | None) -> bool:
    if polyfactory is not None and issubclass(cls, polyfactory):
        return cls is not polyfactory and not cls.__dict__.get("__is_base_factory__", False)
    if factory_boy is not None and issubclass(cls, factory_boy):
        return not cls._meta.abstract  # type: ignore[attr-defined]
    return False


def _subclasses(cls: type) -> Iterator[type]:
    subclasses: list[type] = cls.__subclasses__()
    for sub in subclasses:
        yield sub
        yield from _subclasses(sub)


def collect_factories(targets: Iterable[object], what: str) -> list[type]:
    """The concrete factory classes named by ``targets``: factory classes, base factory
    classes (with every subclass) and modules (every factory class in them)."""
    targets = list(targets)
    if not targets:
        return []  # without importing either library (polyfactory brings Faker: slow)
    polyfactory, factory_boy = _polyfactory_base(), _factory_boy_base()
    bases = tuple(base for base in (polyfactory, factory_boy) if base is not None)
    found: list[type] = []
    for target in targets:
        if isinstance(target, types.ModuleType):
            members = [obj for obj in vars(target).values() if inspect.isclass(obj)]
            chosen = [cls for cls in members if _is_concrete(cls, polyfactory, factory_boy)]
            if not chosen:
                raise ConfigError(
                    f"{what}: module {target.__name__!r} defines no SQLAlchemy factory "
                    f"({_kinds(polyfactory, factory_boy)}). Name the module that holds your "
                    "factories, or the factory classes themselves."
                )
        elif inspect.isclass(target) and bases and issubclass(target, bases):
            chosen = [
                cls
                for cls in (target, *_subclasses(target))
                if _is_concrete(cls, polyfactory, factory_boy)
            ]
        else:
            raise ConfigError(
                f"{what}: {target!r} is not a SQLAlchemy factory. Accepted: "
                f"{_kinds(polyfactory, factory_boy)} classes (a base factory class binds all "
                "its subclasses), or a module of them."
            )
        found.extend(cls for cls in chosen if cls not in found)
    return found


def _kinds(polyfactory: type | None, factory_boy: type | None) -> str:
    polyfactory_kind = "polyfactory's SQLAlchemyFactory"
    factory_boy_kind = "factory-boy's SQLAlchemyModelFactory"
    if polyfactory is None:
        polyfactory_kind += f" (polyfactory is not installed: {INSTALL_HINT})"
    if factory_boy is None:
        factory_boy_kind += " (factory-boy is not installed: pip install factory-boy)"
    return f"{polyfactory_kind} or {factory_boy_kind}"


def _is_polyfactory(cls: type) -> bool:
    # By name, so that telling the two kinds apart never imports (or looks for) polyfactory.
    return any(
        base.__name__ == "SQLAlchemyFactory"
        and base.__module__ == "polyfactory.factories.sqlalchemy_factory"
        for base in cls.__mro__
    )


@contextmanager
def _restoring(factories: list[type]) -> Iterator[None]:
    """Put every factory's persistence configuration back as it was, whatever happens."""
    saved: list[tuple[type, dict[str, object]]] = []
    for cls in factories:
        if _is_polyfactory(cls):
            saved.append(
                (cls, {name: cls.__dict__.get(name, _MISSING) for name in _POLYFACTORY_ATTRIBUTES})
            )
        else:
            meta = cls._meta  # type: ignore[attr-defined]
            saved.append(
                (
                    cls,
                    {
                        "sqlalchemy_session": meta.sqlalchemy_session,
                        "sqlalchemy_session_factory": meta.sqlalchemy_session_factory,
                    },
                )
            )
    try:
        yield
    finally:
        for cls, values in saved:
            if _is_polyfactory(cls):
                for name, value in values.items():
                    if value is _MISSING:
                        if name in cls.__dict__:
                            delattr(cls, name)
                    else:
                        setattr(cls, name, value)
            else:
                for name, value in values.items():
                    setattr(cls._meta, name, value)  # type: ignore[attr-defined]


@contextmanager
def persist_with(session: AsyncSession | Session, *factories: object) -> Iterator[None]:
    """Make the given factories persist through ``session`` inside the block; restore them after.

    ``factories``: polyfactory ``SQLAlchemyFactory`` or factory-boy ``SQLAlchemyModelFactory``
    classes, base factory classes (all their subclasses), or modules (every factory in them).

    With an ``AsyncSession`` (``db_session``): polyfactory's ``create_async`` and
    ``create_batch_async`` use it, with the factory's ``__persistence_method__`` (a commit is
    a savepoint release inside the test). factory-boy and polyfactory's ``create_sync`` are
    sync and get its ``sync_session``: run them where sync IO works,
    ``await db_session.run_sync(lambda _: BookFactory.create())``, or (factory-boy) with
    ``sqlalchemy_session_persistence = None``, whose rows are added to the session and flushed
    by its next query or by ``await db_session.flush()``.
    With a sync ``Session`` (``db_session_sync``): ``create_sync`` and factory-boy's
    ``create()`` use it directly.
    """
    if not isinstance(session, (AsyncSession, Session)):
        raise TypeError(
            f"persist_with needs a SQLAlchemy AsyncSession or Session (db_session or "
            f"db_session_sync), not {type(session).__name__}."
        )
    classes = collect_factories(factories, "persist_with")
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    with _restoring(classes):
        for cls in classes:
            if _is_polyfactory(cls):
                cls.__async_session__ = session if isinstance(session, AsyncSession) else None  # type: ignore[attr-defined]
                cls.__session__ = sync_session  # type: ignore[attr-defined]
            else:
                cls._meta.sqlalchemy_session_factory = None  # type: ignore[attr-defined]
                cls._meta.sqlalchemy_session = sync_session  # type: ignore[attr-defined]
        yield


def load_factories(paths: tuple[str, ...]) -> list[type]:
    """The factories named by ``testkit_factories``: modules or ``module:attribute`` paths."""
    targets: list[object] = []
    for path in paths:
        if ":" in path:
            targets.append(import_from_path(path, "testkit_factories", what="a factory class"))
        else:
            name = import_from_path(f"{path}:__name__", "testkit_factories", what="a module")
            targets.append(sys.modules[name])
    return collect_factories(targets, f"testkit_factories = {' '.join(paths)!r}")


class _TestSessionPersistence:
    """polyfactory's async persistence, on the test's session, opened when first needed."""

    def __init__(self, transaction: TestTransaction, factory: type) -> None:
        self._transaction = transaction
        self._factory = factory

    async def _handler(self) -> Any:
        from polyfactory.factories.sqlalchemy_factory import SQLAASyncPersistence

        session = await self._transaction.session()
        # polyfactory 3.3 added the choice of flush() or commit(); before it, always commit().
        method = getattr(self._factory, "__persistence_method__", None)
        if method is None:
            return SQLAASyncPersistence(session)
        return SQLAASyncPersistence(session, persistence_method=method)

    async def save(self, data: Any) -> Any:
        return await (await self._handler()).save(data)

    async def save_many(self, data: list[Any]) -> list[Any]:
        return list(await (await self._handler()).save_many(data))


def _sync_session(transaction: TestTransaction, factory: type) -> Session:
    session = transaction.open_session()
    if session is None:
        raise ConfigError(
            f"{factory.__name__} (testkit_factories) was asked to save synchronously, and sync "
            "code cannot open the test's database session. Request db_session in this test "
            "(its sync_session is then used: call the factory with persistence None and "
            "`await db_session.flush()`, or inside `await db_session.run_sync(...)`), or use "
            "polyfactory's create_async."
        )
    return session.sync_session


class _TestSyncPersistence:
    """polyfactory's sync persistence, on the sync side of the test's session."""

    def __init__(self, transaction: TestTransaction, factory: type) -> None:
        self._transaction = transaction
        self._factory = factory

    def _handler(self) -> Any:
        from polyfactory.factories.sqlalchemy_factory import SQLASyncPersistence

        session = _sync_session(self._transaction, self._factory)
        method = self._factory.__persistence_method__  # type: ignore[attr-defined]
        return SQLASyncPersistence(session, persistence_method=method)

    def save(self, data: Any) -> Any:
        return self._handler().save(data)

    def save_many(self, data: list[Any]) -> list[Any]:
        return list(self._handler().save_many(data))


@contextmanager
def bound_factories(factories: list[type], transaction: TestTransaction) -> Iterator[None]:
    """For one test, make the ``testkit_factories`` persist through the test's session.

    Nothing is opened here: the session is made when a factory first saves, so a test that
    never creates a row never opens a connection (and runs on trio).
    """
    if not factories:
        yield
        return
    with _restoring(factories):
        for cls in factories:
            if _is_polyfactory(cls):
                cls.__async_session__ = None  # type: ignore[attr-defined]
                cls.__session__ = None  # type: ignore[attr-defined]
                cls.__async_persistence__ = _TestSessionPersistence(transaction, cls)  # type: ignore[attr-defined]
                cls.__sync_persistence__ = _TestSyncPersistence(transaction, cls)  # type: ignore[attr-defined]
            else:
                cls._meta.sqlalchemy_session = None  # type: ignore[attr-defined]
                cls._meta.sqlalchemy_session_factory = _session_factory(transaction, cls)  # type: ignore[attr-defined]
        yield


def _session_factory(transaction: TestTransaction, factory: type) -> Callable[[], Session]:
    return lambda: _sync_session(transaction, factory)
