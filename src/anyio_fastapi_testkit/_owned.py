"""Find the kit's own databases on a server by their ownership comment, and drop them."""

from __future__ import annotations

from sqlalchemy.engine import URL

from ._databases import (
    OWNERSHIP_MARK,
    PENDING_PREFIX,
    AdminConnection,
    drop_leftover,
    is_run_comment,
    pending_token,
)
from ._errors import DatabaseError
from ._liveness import live_lock_ids, lock_id, lock_in_comment, run_token
from ._server import connect_admin

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
    """Databases the kit is making, or left half-made (see ``_databases.PENDING_PREFIX``)."""
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
    dropped its last (see ``_liveness``), so a free lock means the run was killed (or has
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
