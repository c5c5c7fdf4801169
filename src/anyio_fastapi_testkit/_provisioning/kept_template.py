"""The template kept between runs on a configured server, while its schema key matches.

Building the template (create_all, or ``alembic upgrade head`` in a subprocess) is most of a
run's fixed cost on a configured server. So a run that built it keeps it, under a name made
from the configured database, the server user and the schema key (``template_key``): the
next run with the same schema, server and user clones its working database from it instead.
Working databases stay the run's own, dropped at its end.

What proves that a kept template is the kit's, and holds that schema:

- it carries the kit's ownership comment for that key (``kept_mark``), and its owner is the
  run's user: a database of the same name without that comment (somebody else's, or one of
  another key) is never reused, nor touched;
- it gets its name and its comment in one transaction, and only once its schema was built
  (``keep_template``): a run killed while building leaves a half-made template under its
  run's own name (dropped by the next run, as any dead run's), never under the kept name;
- the key is in the name, so a kept name never holds another schema, and the schema of a
  kept template is never changed (a schema change makes another name).

Kept templates of other keys (the schema changed) are dropped by a run that finds no other
run of the kit alive on the server (``pg_locks``, see ``liveness``), and only while it holds
the gate lock (``GATE_LOCK``), which a run also holds while it looks its kept template up: so
a run never drops a template another run has found and is about to clone. Advisory locks
belong to the database of their session: every run that computes a kept name takes the gate
through the configured database, whose name is part of the kept name.

``--testkit-fresh-db``, ``--cache-clear`` and ``-p no:cacheprovider`` work as with the kit's
own cached cluster: the first two build the template anew (``--cache-clear`` then keeps the new
one, replacing the old), the last keeps nothing between runs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from .._core.errors import DatabaseError
from .._postgres.server import connect_admin
from .databases import DEFAULT_BUSY_TIMEOUT, ownership_comment, rename_marked, test_database_names
from .liveness import live_lock_ids, lock_id, run_token

KEPT_RUN_ID = "kept template"  # in the ownership comment: "...; run kept template <key>"
# The gate's advisory lock, in the configured database: a class of its own ("tkgt"), so that
# it is never taken for a run's lock (``liveness.live_lock_ids``).
GATE_LOCK = (0x746B6774, 0)
_KEY = re.compile(r"[0-9a-f]{64}")
_KEPT = (
    "SELECT datname, shobj_description(oid, 'pg_database'), "
    "datdba = (SELECT oid FROM pg_roles WHERE rolname = current_user) "
    "FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE %s"
)


def kept_mark(key: str) -> str:
    """The ownership comment of the kept template of the schema with this key."""
    return ownership_comment(f"{KEPT_RUN_ID} {key}")


def kept_key(comment: str) -> str | None:
    """The key a kept template's comment names (None: not a kept template's comment)."""
    prefix = ownership_comment(f"{KEPT_RUN_ID} ")
    key = comment.removeprefix(prefix) if comment.startswith(prefix) else ""
    return key if _KEY.fullmatch(key) else None


def kept_template_name(base: str, user: str, key: str) -> str:
    """``test_<base>_<digest>_template``: the digest of the server user and the key."""
    digest = hashlib.sha256(f"{user}\x00{key}".encode()).hexdigest()[:8]
    return test_database_names(base, None, digest)[0]


@dataclass
class KeptTemplate:
    """What ``find_kept_template`` found: the kept name for this run's key, whether a kept
    template the run may clone is there, and the kept templates of other keys it dropped."""

    name: str
    reusable: bool
    dropped: list[str] = field(default_factory=list)


def find_kept_template(
    admin_url: URL, base: str, key: str, run_id: str, *, replace: bool = False
) -> KeptTemplate:
    """Look up the kept template of ``key`` (the run holds its run lock already), and drop
    the kept templates of other keys if no other run of the kit is alive on the server.
    ``replace`` (``--cache-clear``): the one of this key is not reused, and dropped too if no
    other run is alive. Raises ``DatabaseError`` when the server cannot be read.
    """
    own_lock = lock_id(run_token(run_id))
    with connect_admin(admin_url) as conn:
        try:
            conn.execute("SELECT pg_advisory_lock(%s, %s)", GATE_LOCK)
            user = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
            name = kept_template_name(base, user, key)
            rows = conn.execute(_KEPT, (ownership_comment(f"{KEPT_RUN_ID} ") + "%",)).fetchall()
            found = any(
                datname == name and comment == kept_mark(key) and owned
                for datname, comment, owned in rows
            )
            stale = [
                str(datname)
                for datname, comment, owned in rows
                if owned
                and (other := kept_key(str(comment))) is not None
                and (other != key or replace)
                and datname == kept_template_name(base, user, other)
            ]
            dropped: list[str] = []
            if stale and not (live_lock_ids(conn) - {own_lock}):
                dropped = [stale_name for stale_name in stale if _dropped(conn, stale_name)]
        except psycopg.Error as exc:
            raise DatabaseError(
                f"Could not look up the template kept by earlier runs: {str(exc).strip()}"
            ) from None
    # Closing the connection released the gate.
    return KeptTemplate(name, found and not replace and name not in dropped, dropped)


def keep_template(
    admin_url: URL, built: str, name: str, key: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
) -> bool:
    """Make the run's template ``built`` (its schema built) the kept template ``name`` of
    ``key``: renamed and marked in one transaction. False (and ``built`` left as it is, the
    run's own) when ``name`` is taken, e.g. by a run that kept it first, or a session stays
    on ``built``."""
    return rename_marked(admin_url, built, name, kept_mark(key), busy_timeout=busy_timeout)


def _dropped(conn: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    try:
        conn.execute(statement)
    except psycopg.Error:  # e.g. it is in use after all: left for a later run
        return False
    return True
