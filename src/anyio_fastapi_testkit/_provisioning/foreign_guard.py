"""No connection to a PostgreSQL database the kit did not create, from any SQLAlchemy engine.

The app under test builds engines of its own (at import, in its lifespan, in a service) from
its settings. When those settings were not pointed at the test database (no
``testkit_database_env``, a variable the settings do not read, a settings object cached from
the shell's environment), the app would read and write whatever database the shell names,
production's included. While the kit manages the tests' database, every new DBAPI connection
of a PostgreSQL engine is checked first (SQLAlchemy's public ``do_connect`` event, on every
engine, sync and async) and refused unless it goes to one of the kit's own databases.

The same check runs inside the Alembic subprocess, where the stock async ``env.py`` builds its
engine from the app's settings rather than from the URL the kit gives it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from .._core.errors import DatabaseError

DEFAULT_PORT = 5432


class ForeignDatabaseError(DatabaseError):
    """An engine tried to connect to a database the kit did not create; it was refused."""


def target(params: Mapping[str, Any]) -> tuple[str, int]:
    """(database, port) a DBAPI connection's parameters name (psycopg: ``dbname``, asyncpg:
    ``database``); an absent database is "" (libpq would pick one by itself)."""
    database = params.get("dbname") or params.get("database") or ""
    port = params.get("port") or DEFAULT_PORT
    try:
        return str(database), int(port)
    except (TypeError, ValueError):
        return str(database), -1


class Guard:
    """The databases connections may go to; the check itself, as a ``do_connect`` listener."""

    def __init__(self, advice: str) -> None:
        self._lock = threading.Lock()
        self._allowed: set[tuple[str, int]] = set()
        self._advice = advice
        self._listening = False

    def allow(self, port: int | None, names: Iterable[str]) -> None:
        with self._lock:
            self._allowed.update((name, port or DEFAULT_PORT) for name in names)

    def start(self) -> None:
        if not self._listening:
            event.listen(Engine, "do_connect", self._check)
            self._listening = True

    def stop(self) -> None:
        if self._listening:
            event.remove(Engine, "do_connect", self._check)
            self._listening = False

    def _check(self, dialect: Any, record: Any, args: list[Any], params: dict[str, Any]) -> None:
        __tracebackhide__ = True
        if dialect.name != "postgresql":
            return
        database, port = target(params)
        with self._lock:
            if (database, port) in self._allowed:
                return
            known = ", ".join(sorted(f"{name!r} (port {p})" for name, p in self._allowed))
        host = params.get("host") or "the default host"
        raise ForeignDatabaseError(
            f"anyio-fastapi-testkit refused a connection to database {database or '(none)'!r} "
            f"on {host}, port {port}: the kit did not create it, and during the tests no "
            "engine may connect anywhere but to the kit's own databases "
            f"({known or 'none is ready yet'}), so that the tests never read or write a "
            f"database of yours. {self._advice}"
        )


APP_ADVICE = (
    "The engine's URL most likely comes from the app's settings or environment. Fix: set "
    "testkit_database_env to the variable(s) the settings read (e.g. testkit_database_env = "
    "DATABASE_URL, or DB_HOST={host} DB_PORT={port} DB_NAME={database} ...) so that they name "
    "the test database; or build the engine from the `database_url` fixture; or let the app "
    "use testkit_session_dependency / testkit_sessionmaker, which the kit binds to the test's "
    "transaction."
)

_GUARD = Guard(APP_ADVICE)


def guard() -> Guard:
    """This process's guard (one: the listener is global to SQLAlchemy)."""
    return _GUARD


ALEMBIC_ADVICE = (
    "This is the Alembic env.py building the kit's template: it did not use the URL the kit "
    "gave it. The kit sets Alembic's sqlalchemy.url (config.get_main_option('sqlalchemy.url'), "
    "what the stock env.py reads) and the variables of testkit_database_env for the template "
    "database. Fix: an env.py that reads the app's settings needs testkit_database_env naming "
    "the variables those settings read (e.g. testkit_database_env = DATABASE_URL); an env.py "
    "that calls config.set_main_option('sqlalchemy.url', ...) with a value of its own should "
    "keep a URL that is already set."
)
