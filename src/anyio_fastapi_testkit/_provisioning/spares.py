"""Spare clones of a cached template: a warm run renames one into its working database.

``CREATE DATABASE ... TEMPLATE`` copies every file of the template (most of a warm start); a
rename is a catalog update. So a cached cluster keeps, per working database name, one clone made
in advance, marked as a spare of the template's key; a run claims it and makes the next one in a
background thread while its tests run. A run that copies its working database while the
conftest files are imported (``testkit_database_env``) makes none: see
``TestDatabases.start``.
"""

from __future__ import annotations

import hashlib
import os
import threading

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from .._core.errors import DatabaseError
from .._postgres.server import connect_admin
from .databases import OWNERSHIP_MARK, TEMPLATE_SUFFIX, create_database

SPARE_PREFIX = "test_spare_"


def spare_name(template: str, working: str) -> str:
    """The spare of ``working`` (short, whatever the length of the names)."""
    digest = hashlib.sha256(f"{template}\x00{working}".encode()).hexdigest()[:16]
    return f"{SPARE_PREFIX}{digest}"


def spare_run_id(key: str) -> str:
    return f"spare {key}"


def claimable_spares(template: str | None, working: str | None) -> set[str] | None:
    """The names of the spares this run may claim, given the names of the ``template`` and of
    this process's ``working`` database: under xdist, those of this run's workers' databases
    and of a run without xdist (a run with fewer workers than an earlier one thus lets the
    others' go instead of keeping them, a copy of the template each, for good); None (all of
    them) without xdist, or for names not made as the kit makes them."""
    # pytest-xdist sets both in each worker (documented).
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if template is None or working is None or not worker or not count.isdigit():
        return None
    base = template.removesuffix(TEMPLATE_SUFFIX)
    if base == template or working != f"{base}_{worker}":
        return None
    names = [base, *(f"{base}_gw{number}" for number in range(int(count)))]
    return {spare_name(template, name) for name in names}


def claim_spare(admin_url: URL, spare: str, working: str, key: str, run_id: str) -> bool:
    """Rename the spare of ``key`` to ``working`` and mark it as this run's; False if none."""
    expected = f"{OWNERSHIP_MARK}; run {spare_run_id(key)}"
    with connect_admin(admin_url) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (spare,),
        ).fetchone()
        if row is None or row[0] != expected:
            return False
        try:
            # One transaction: a run killed in between must not leave the working database
            # under the spare's mark, nor the spare under this run's name.
            with conn.transaction():
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(spare), sql.Identifier(working)
                    )
                )
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(working), sql.Literal(f"{OWNERSHIP_MARK}; run {run_id}")
                    )
                )
        except psycopg.Error:
            return False  # e.g. a session connected to it: clone instead
    return True


# Seconds the end of a run waits for the spare's copy: generous for a large template, and a
# bound for a server that hangs.
SPARE_WAIT = 120.0


class SpareMaker:
    """Makes the next spare in a thread, so that the copy overlaps the run's tests."""

    def __init__(self, admin_url: URL, template: str, spare: str, key: str) -> None:
        self.error: Exception | None = None
        self._thread = threading.Thread(
            target=self._make,
            args=(admin_url, template, spare, key),
            name="testkit-spare-database",
            daemon=True,
        )
        self._thread.start()

    def _make(self, admin_url: URL, template: str, spare: str, key: str) -> None:
        try:
            create_database(admin_url, spare, template=template, run_id=spare_run_id(key))
        except (DatabaseError, psycopg.Error) as exc:
            self.error = exc  # no spare: the next run clones, as without one

    def join(self, timeout: float | None = SPARE_WAIT) -> None:
        """Wait for the copy; a server that stopped answering leaves it behind (a daemon
        thread), as the database it was making, which the next run drops."""
        self._thread.join(timeout)
