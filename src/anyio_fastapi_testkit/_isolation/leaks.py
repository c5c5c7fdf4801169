"""Find data committed outside the test's transaction, so isolation never fails silently.

After each test that used the database, one query counts the rows of every table of the test
database and compares them with the counts before. Rows that survive the test's rollback were
committed by something the kit does not control. The query runs on the tests' shared
connection, sent with the test's rollback in the same round trip (it sees what others
committed, as any READ COMMITTED statement does), or on a connection of the detector's own
when no shared connection is open (trio, sync-only tests).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from .._core.urls import mask_url
from .._postgres.server import connect_admin

if TYPE_CHECKING:
    from .._provisioning.run_databases import TestDatabases

LeakReport = list[tuple[str, int, int]]  # (table, rows before, rows after)

_TABLES = """
SELECT quote_ident(schemaname) || '.' || quote_ident(relname)
FROM pg_stat_user_tables ORDER BY 1
"""

LIKELY_ROUTES = (
    "Likely routes: an engine the app builds at import time or in its lifespan (point it at "
    "the test session with testkit_session_dependency, or make its sessionmaker hand out test "
    "sessions with testkit_sessionmaker), a sessionmaker not named in testkit_sessionmaker, or "
    "the test's own engine (db_engine commits for real; use db_session or db_connection)."
)


class LeakDetector:
    """Row counts of the working database's tables, kept on a sync connection of its own."""

    def __init__(self, url: str, limit: float | None = None) -> None:
        self._url = make_url(url).set(drivername="postgresql")
        self._limit = limit  # per count, testkit_timeout when set: the server may hang
        self._connection: psycopg.Connection[tuple[Any, ...]] | None = None
        self._query: str | None = None
        self._tables: list[str] = []
        self._baseline: list[int] | None = None

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._connection is None or self._connection.closed:
            self._connection = connection = connect_admin(self._url, limit=self._limit)
            if self._query is None:
                self._tables = [row[0] for row in connection.execute(_TABLES).fetchall()]
                # One round trip for all tables: a UNION of count(*) queries.
                self._query = (
                    sql.SQL(" UNION ALL ")
                    .join(
                        sql.SQL("SELECT {}::text, count(*) FROM {}").format(
                            sql.Literal(table), sql.SQL(table)
                        )
                        for table in self._tables
                    )
                    .as_string(connection)
                )
        return self._connection

    @property
    def query(self) -> str | None:
        """The counting query (plain SQL, no parameters), or None when there are no tables."""
        self._connect()
        return self._query if self._tables else None

    def _counts(self) -> list[int]:
        query = self.query
        if query is None:
            return []
        try:
            rows = self._connect().execute(query).fetchall()
        except psycopg.OperationalError:
            # The detector's own connection was lost (a test ended its backend, a restart, a
            # network fault): not the fault of the test being checked. Count on a new one;
            # if that fails too, the server itself is in trouble and the error says so.
            self.close()
            rows = self._connect().execute(query).fetchall()
        return self._ordered(rows)

    def _ordered(self, rows: Iterable[Sequence[Any]]) -> list[int]:
        counts = {row[0]: row[1] for row in rows}
        return [int(counts[table]) for table in self._tables]

    def take_baseline(self) -> None:
        if self._baseline is None:
            self._baseline = self._counts()

    def check(self) -> LeakReport:
        """Tables whose row count changed since the baseline; the baseline moves on."""
        if self._baseline is None:
            return []
        return self._compare(self._counts())

    def check_rows(self, rows: Iterable[Sequence[Any]]) -> LeakReport:
        """As ``check()``, from the rows of ``query`` run elsewhere (on the shared connection)."""
        if self._baseline is None:
            return []
        return self._compare(self._ordered(rows))

    def _compare(self, after: list[int]) -> LeakReport:
        assert self._baseline is not None
        report = [
            (table, before, now)
            for table, before, now in zip(self._tables, self._baseline, after, strict=True)
            if before != now
        ]
        self._baseline = after
        return report

    def describe(self, report: LeakReport) -> str:
        tables = ", ".join(f"{table} ({before} -> {after} rows)" for table, before, after in report)
        return (
            f"Data was committed to the test database {mask_url(self._url)} outside the test's "
            f"transaction, so it survived the rollback and can leak into other tests: {tables}. "
            f"{LIKELY_ROUTES} Set testkit_leak_check = warn or off to relax this check."
        )

    def close(self) -> None:
        """Close the detector's connection (a later count opens a new one); idempotent."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close()


class LeakWarning(UserWarning):
    """Rows were committed outside the test's transaction (testkit_leak_check = warn)."""


class LeakCheck:
    """The leak check of one run's test databases, per ``testkit_leak_check``.

    Its detector is made once the working database exists, and closed by the databases'
    ``close()`` before they are dropped. Shared by the async and the sync fixtures, so that
    one baseline serves both.
    """

    def __init__(self, databases: TestDatabases) -> None:
        self._databases = databases
        self._detector: LeakDetector | None = None
        self._off = databases.settings.leak_check == "off"

    def _ready(self) -> LeakDetector | None:
        if self._detector is None:
            databases = self._databases
            if self._off or not databases.ready:
                return None
            self._detector = LeakDetector(str(databases.working_url()), databases.settings.timeout)
            databases.before_close(self.close)
        return self._detector

    def take_baseline(self) -> None:
        detector = self._ready()
        if detector is not None:
            detector.take_baseline()

    def query(self) -> str | None:
        """The counting query, for the shared connection (None: no check)."""
        detector = self._ready()
        return None if detector is None else detector.query

    def check(self, rows: Iterable[Sequence[Any]] | None = None) -> None:
        """Fail (or warn, per testkit_leak_check) if rows were committed outside the test.

        ``rows``: the result of ``query()`` run elsewhere; without it the detector counts on
        its own connection.
        """
        detector = self._ready()
        if detector is None:
            return
        report = detector.check() if rows is None else detector.check_rows(rows)
        if not report:
            return
        message = detector.describe(report)
        if self._databases.settings.leak_check == "warn":
            warnings.warn(message, LeakWarning, stacklevel=2)
        else:
            pytest.fail(message, pytrace=False)

    def close(self) -> None:
        if self._detector is not None:
            detector, self._detector = self._detector, None
            detector.close()


_CHECKS: weakref.WeakKeyDictionary[TestDatabases, LeakCheck] = weakref.WeakKeyDictionary()


def leak_check(databases: TestDatabases) -> LeakCheck:
    """The leak check of ``databases``, made on first use."""
    check = _CHECKS.get(databases)
    if check is None:
        check = _CHECKS[databases] = LeakCheck(databases)
    return check
