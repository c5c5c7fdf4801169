"""Find the kit's own databases on a server by their ownership comment, and drop them; check
and clean the kit's own cached cluster."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from .._core.errors import DatabaseError
from .._core.fixes import LOCAL_FIXES
from .._postgres.server import connect_admin
from .databases import (
    OWNERSHIP_MARK,
    PENDING_PREFIX,
    AdminConnection,
    drop_leftover,
    is_run_comment,
    pending_token,
)
from .liveness import live_lock_ids, lock_id, lock_in_comment, run_token

_MARKED = (
    "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
    "WHERE shobj_description(oid, 'pg_database') LIKE %s ORDER BY datname"
)
_PENDING = "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY datname"


def marked_databases(admin_url: URL) -> dict[str, str]:
    """The kit's databases on the server, with their comments (which name the run)."""
    with connect_admin(admin_url) as conn:
        return _marked(conn)


def pending_databases(admin_url: URL) -> list[str]:
    """Databases the kit is making, or left half-made (see ``databases.PENDING_PREFIX``)."""
    with connect_admin(admin_url) as conn:
        return _pending(conn)


def _marked(conn: AdminConnection) -> dict[str, str]:
    rows = conn.execute(_MARKED, (f"{OWNERSHIP_MARK};%",)).fetchall()
    return {str(name): str(comment) for name, comment in rows}


def _pending(conn: AdminConnection) -> list[str]:
    rows = conn.execute(_PENDING, (PENDING_PREFIX,)).fetchall()
    return [str(name) for (name,) in rows if pending_token(str(name)) is not None]


def drop_run_databases(admin_url: URL, run_id: str) -> list[str]:
    """Drop the kit's databases created by the run ``run_id``; return their names."""
    token = run_token(run_id)
    names = [
        name
        for name, comment in marked_databases(admin_url).items()
        if is_run_comment(comment, run_id)
    ]
    names += [name for name in pending_databases(admin_url) if pending_token(name) == token]
    for name in names:
        drop_leftover(admin_url, name)
    return names


def drop_databases_except(admin_url: URL, kept: set[str]) -> list[str]:
    """Drop every database of the kit's but ``kept`` (leftovers of killed runs in a cache),
    and every half-made one: only for the kit's own cluster, which this run alone uses."""
    names = [name for name in marked_databases(admin_url) if name not in kept]
    names += pending_databases(admin_url)
    for name in names:
        drop_leftover(admin_url, name)
    return names


def drop_dead_runs(admin_url: URL) -> tuple[list[str], dict[str, str]]:
    """Drop what runs that are gone left on a shared server: each database marked as guarded
    by a run lock that no session holds, and each half-made one of such a run. Returns the
    names dropped and, by name, why the others could not be (e.g. another user's): those are
    left, and must not stop this run.

    A run takes its lock before it makes its first database and holds it until it has
    dropped its last (see ``liveness``), so a free lock means the run was killed (or has
    just finished, and drops them itself). Databases without the kit's mark and a lock in
    it (somebody else's, or a run's from before the kit took locks) are never touched.
    """
    with connect_admin(admin_url) as conn:
        guarded = {
            name: lock
            for name, comment in _marked(conn).items()
            if (lock := lock_in_comment(comment)) is not None
        }
        guarded |= {name: lock_id(str(pending_token(name))) for name in _pending(conn)}
        # The locks after the databases: the run of each one listed held its lock by then,
        # so a lock free now was released by its run (killed, or done and dropping its own).
        live = live_lock_ids(conn)
    dropped: list[str] = []
    failed: dict[str, str] = {}
    for name in (name for name, lock in guarded.items() if lock not in live):
        try:
            drop_leftover(admin_url, name)
        except DatabaseError as exc:
            failed[name] = str(exc).split(" Fix: ", 1)[0]  # the caller says how to fix it
        else:
            dropped.append(name)
    return dropped, failed


# --- the kit's own cached cluster ---------------------------------------------------------

SYSTEM_DATABASES = ("postgres", "template0", "template1")
FIRST_USER_OID = 16384  # PostgreSQL's FirstNormalObjectId: what initdb made has lower oids
_TABLE_KINDS = ("r", "t", "m")  # counted (and so read whole)
_RELATIONS = (
    "SELECT c.oid, n.nspname, c.relname, c.relkind, pg_relation_size(c.oid) "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 't', 'm', 'i', 'S') AND NOT c.relisshared "
    "AND c.relpersistence <> 't' ORDER BY n.nspname, c.relname"
)
_COUNTS_PER_QUERY = 200
_SESSIONS_GONE_SECONDS = 5.0
# A session ends about a millisecond after its client closed it; the start of a warm run
# waits for the check's own sessions (see clean_own_cluster).
_SESSIONS_POLL_SECONDS = 0.001


def database_summary(admin_url: URL, name: str) -> dict[str, Any]:
    """What database ``name`` holds, to tell later whether its files were damaged.

    Each table made after initdb is read whole, so a damaged page or a missing file raises
    (connecting reads the core catalogs); recorded are those tables' rows and the size of
    their indexes and sequences (a missing or truncated file reads as smaller), plus whether
    the size of every relation, the catalogs' too, is a whole number of pages. About 10 ms
    for a small schema. Raises ``DatabaseError`` when the database cannot be read.
    """
    with connect_admin(admin_url.set(database=name), hint=LOCAL_FIXES) as conn:
        try:
            block = int(str(conn.execute("SHOW block_size").fetchone()[0]))  # type: ignore[index]
            rows = conn.execute(_RELATIONS).fetchall()
            tables = [row for row in rows if row[3] in _TABLE_KINDS and row[0] >= FIRST_USER_OID]
            counts: list[int] = []
            for start in range(0, len(tables), _COUNTS_PER_QUERY):
                chunk = tables[start : start + _COUNTS_PER_QUERY]
                query = sql.SQL("SELECT {}").format(
                    sql.SQL(", ").join(
                        sql.SQL("(SELECT count(*) FROM {})").format(sql.Identifier(schema, rel))
                        for _oid, schema, rel, _kind, _size in chunk
                    )
                )
                counts += [int(value) for value in conn.execute(query).fetchone() or ()]
        except psycopg.Error as exc:
            raise DatabaseError(f"Could not read database {name!r}: {str(exc).strip()}") from None
    counted = {row[0]: count for row, count in zip(tables, counts, strict=True)}
    relations = {
        f"{schema}.{rel}": [kind, counted[oid] if kind in _TABLE_KINDS else int(size)]
        for oid, schema, rel, kind, size in rows
        if oid >= FIRST_USER_OID
    }
    whole = all(int(size) % block == 0 for *_rest, size in rows)
    return {"block_size": block, "whole_pages": whole, "relations": relations}


def summary_matches(expected: dict[str, Any], found: dict[str, Any]) -> bool:
    """Whether ``found`` shows the database as ``expected`` recorded it: the same relations,
    the same rows, indexes and sequences no smaller (they may grow, e.g. a GIN index's pending
    list merged by autovacuum), every file whole pages."""
    if not found.get("whole_pages") or found.get("block_size") != expected.get("block_size"):
        return False
    recorded, now = expected.get("relations"), found.get("relations")
    if not isinstance(recorded, dict) or not isinstance(now, dict) or recorded.keys() != now.keys():
        return False
    for name, (kind, value) in now.items():
        was = recorded[name]
        if not isinstance(was, list) or len(was) != 2 or was[0] != kind:
            return False
        if kind in _TABLE_KINDS:
            if value != was[1]:
                return False
        elif value < was[1] or value <= 0:  # an index or a sequence has one page at least
            return False
    return True


@dataclass
class CleanedCluster:
    """What ``clean_own_cluster`` kept and dropped."""

    template: bool  # the template was found whole and kept
    dropped: list[str] = field(default_factory=list)
    kept: frozenset[str] = frozenset()  # the template and its spares, found whole
    template_oid: int | None = None  # of the template kept


def clean_own_cluster(
    admin_url: URL,
    *,
    template: str | None,
    template_mark: str,
    spare_mark: str | None,
    expected: dict[str, Any] | None,
    unchanged: int | None = None,
) -> CleanedCluster:
    """In the kit's own cached cluster (never a server anyone else uses): keep ``template``
    and its spares if they carry their marks and hold what ``expected`` recorded, and drop
    every other database but PostgreSQL's own, marked or not. ``unchanged``: the oid of a
    template whose files are those an earlier check found whole (see
    ``ClusterCache.unchanged_template``): not read again. Raises ``DatabaseError`` when a
    database cannot be dropped."""
    with connect_admin(admin_url, hint=LOCAL_FIXES) as conn:
        rows = conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database'), datistemplate, oid "
            "FROM pg_database"
        ).fetchall()
        found = {str(name): comment for name, comment, *_ in rows if name not in SYSTEM_DATABASES}
        templates = {str(name) for name, _, is_template, _ in rows if is_template}
        oids = {str(name): int(oid) for name, _, _, oid in rows}
        kept: set[str] = set()
        if (
            template is not None
            and expected is not None
            and found.get(template) == template_mark
            and (oids[template] == unchanged or _holds(admin_url, template, expected))
        ):
            kept.add(template)
            kept |= {
                name
                for name, comment in found.items()
                if spare_mark is not None
                and comment == spare_mark
                and _holds(admin_url, name, expected)
            }
        dropped = sorted(found.keys() - kept)
        for name in dropped:
            _drop_own(conn, name, name in templates)
        # The checks' sessions end after their connections closed: a spare is claimed by a
        # rename, which fails while any session is still on it.
        _wait_for_no_sessions(conn, sorted(kept))
    oid = oids[template] if template is not None and template in kept else None
    return CleanedCluster(template in kept, dropped, frozenset(kept), oid)


def _holds(admin_url: URL, name: str, expected: dict[str, Any]) -> bool:
    try:
        return summary_matches(expected, database_summary(admin_url, name))
    except DatabaseError:
        return False  # unreadable: damaged


def _drop_own(conn: AdminConnection, name: str, is_template: bool) -> None:
    identifier = sql.Identifier(name)
    try:
        if is_template:  # PostgreSQL refuses to drop a database marked as a template
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(identifier))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
    except psycopg.Error as exc:
        raise DatabaseError(
            f"Could not drop database {name!r} in the kit's cached cluster: {str(exc).strip()}"
        ) from None


def _wait_for_no_sessions(conn: AdminConnection, names: list[str]) -> None:
    deadline = time.monotonic() + _SESSIONS_GONE_SECONDS
    while names and time.monotonic() < deadline:
        busy = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s)", (names,)
        ).fetchone()
        if not busy or not busy[0]:
            return
        time.sleep(_SESSIONS_POLL_SECONDS)
