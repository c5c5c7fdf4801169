"""Find the kit's own databases on a server by their ownership comment, and drop them."""

from __future__ import annotations

from sqlalchemy.engine import URL

from ._databases import OWNERSHIP_MARK, drop_database
from ._server import connect_admin

_MARKED = (
    "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
    "WHERE shobj_description(oid, 'pg_database') LIKE %s ORDER BY datname"
)


def marked_databases(admin_url: URL) -> dict[str, str]:
    """The kit's databases on the server, with their comments (which name the run)."""
    with connect_admin(admin_url) as conn:
        rows = conn.execute(_MARKED, (f"{OWNERSHIP_MARK};%",)).fetchall()
    return {str(name): str(comment) for name, comment in rows}


def drop_run_databases(admin_url: URL, run_id: str) -> list[str]:
    """Drop the kit's databases created by the run ``run_id``; return their names."""
    names = [
        name
        for name, comment in marked_databases(admin_url).items()
        if comment == f"{OWNERSHIP_MARK}; run {run_id}"
    ]
    for name in names:
        drop_database(admin_url, name)
    return names


def drop_databases_except(admin_url: URL, kept: set[str]) -> list[str]:
    """Drop every database of the kit's but ``kept`` (leftovers of killed runs in a cache)."""
    names = [name for name in marked_databases(admin_url) if name not in kept]
    for name in names:
        drop_database(admin_url, name)
    return names
