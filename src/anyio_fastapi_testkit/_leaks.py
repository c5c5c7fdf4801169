"""Find data committed outside the test's transaction, so isolation never fails silently.

After each test that used the database, one query on a connection of the kit's own counts the
rows of every table of the test database and compares them with the counts before. Rows that
survive the test's rollback were committed by something the kit does not control.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from ._server import connect_admin
from ._urls import mask_url

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

    def __init__(self, url: str) -> None:
        self._url = make_url(url).set(drivername="postgresql")
        self._connection: psycopg.Connection[tuple[Any, ...]] | None = None
        self._query: sql.Composed | None = None
        self._tables: list[str] = []
        self._baseline: list[int] | None = None

    def _counts(self) -> list[int]:
        if self._connection is None or self._connection.closed:
            self._connection = connect_admin(self._url)
            self._tables = [row[0] for row in self._connection.execute(_TABLES).fetchall()]
            # One round trip for all tables: a UNION of count(*) queries.
            self._query = sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {}::text, count(*) FROM {}").format(
                    sql.Literal(table), sql.SQL(table)
                )
                for table in self._tables
            )
        if not self._tables or self._query is None:
            return []
        rows = dict(self._connection.execute(self._query).fetchall())
        return [int(rows[table]) for table in self._tables]

    def take_baseline(self) -> None:
        if self._baseline is None:
            self._baseline = self._counts()

    def check(self) -> LeakReport:
        """Tables whose row count changed since the baseline; the baseline moves on."""
        if self._baseline is None:
            return []
        after = self._counts()
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
        if self._connection is not None:
            self._connection.close()
            self._connection = None
