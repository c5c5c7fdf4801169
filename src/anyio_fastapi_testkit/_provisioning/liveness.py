"""Which runs are alive on a configured server, told by the server itself.

Several runs may share one configured server (two developers, two CI jobs). Each run names its
databases with its token (a digest of its run id), and every process of the run that makes or
uses them holds a session-level *shared* advisory lock on the run's key, on an admin
connection of its own, for as long as it does: the process of a run without xdist, each xdist
worker, and the xdist controller until it has dropped the run's databases. The server ends a
killed process's session, and its lock with it, so a later run tells a dead run's leftovers
from a live run's databases by looking the key up in ``pg_locks``: no clocks, pids or host
names compared across machines.

``pg_locks`` rather than ``pg_try_advisory_lock``: an advisory lock belongs to the database its
session is connected to, and two runs may connect through different databases (``appdb``,
``postgres``); ``pg_locks`` lists the locks of every database, to every user.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from .._core.errors import DatabaseError
from .._core.urls import mask_url
from .._postgres.server import connect_admin

# The first key of the kit's advisory locks ("tkit"); the second is the run's token.
LOCK_CLASS = 0x746B6974
TOKEN_CHARS = 8  # hex digits: 32 bits, the second key of a two-key advisory lock
MIN_IDLE_TIMEOUT_VERSION = 140000  # idle_session_timeout (PostgreSQL 14) would end the lock

_LOCK_IN_COMMENT = re.compile(rf"; alive while advisory lock \({LOCK_CLASS}, (\d+)\) is held$")


def run_token(run_id: str) -> str:
    """The run's token, in its database names and its lock key (8 hex digits)."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:TOKEN_CHARS]


def lock_id(token: str) -> int:
    """The lock's second key as ``pg_locks.objid`` shows it (unsigned)."""
    return int(token, 16)


def lock_clause(token: str) -> str:
    """The end of a locked database's ownership comment: how anybody can tell it is in use."""
    return f"; alive while advisory lock ({LOCK_CLASS}, {lock_id(token)}) is held"


def lock_in_comment(comment: str) -> int | None:
    """The lock id an ownership comment names (None: no lock guards that database)."""
    found = _LOCK_IN_COMMENT.search(comment)
    return int(found.group(1)) if found else None


def live_lock_ids(conn: psycopg.Connection[tuple[Any, ...]]) -> set[int]:
    """The lock ids some session holds (or waits for), in any database of the server."""
    rows = conn.execute(
        "SELECT objid::bigint FROM pg_locks "
        "WHERE locktype = 'advisory' AND objsubid = 2 AND classid::bigint = %s",
        (LOCK_CLASS,),
    ).fetchall()
    return {int(objid) for (objid,) in rows}


class RunLock:
    """The run's shared advisory lock, held on an admin connection until ``release()``."""

    def __init__(self, admin_url: URL, run_id: str) -> None:
        self.token = run_token(run_id)
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = connect_admin(admin_url)
        try:
            if self._conn.info.server_version >= MIN_IDLE_TIMEOUT_VERSION:
                # A server-wide idle_session_timeout would end the session, and the lock.
                self._conn.execute("SET idle_session_timeout = 0")
            unsigned = lock_id(self.token)
            signed = unsigned - (1 << 32) if unsigned >= 1 << 31 else unsigned
            self._conn.execute("SELECT pg_advisory_lock_shared(%s, %s)", (LOCK_CLASS, signed))
        except psycopg.Error as exc:
            self.release()
            raise DatabaseError(
                f"Could not take this run's advisory lock on {mask_url(admin_url)}: "
                f"{str(exc).strip()}. The kit holds it while the run uses its databases, so "
                "that other runs on the server leave them alone. Fix: let the URL's user run "
                "pg_advisory_lock_shared(int, int) (every user may, unless revoked)."
            ) from None
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Close the connection, which releases the lock. Idempotent."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
