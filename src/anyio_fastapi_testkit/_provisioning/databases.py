"""The databases the kit owns: named, created, cloned and dropped here, and never any other.

Each database the kit creates carries a comment marking it as the kit's. A database without
that mark is somebody else's: the kit refuses to recreate or drop it. CREATE DATABASE and
COMMENT are two statements, which a kill can separate: so the kit creates each database under
a name of its own (``PENDING_PREFIX``, the run's token, a nonce), marks it, and only then
renames it. A database under a final name is therefore always marked; an unmarked one under a
pending name is a half-made one of the kit's, dropped once its run is gone (see ``owned``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from typing import Any, Literal

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from .._core.clock import now
from .._core.errors import DatabaseError
from .._core.urls import mask_url
from .._postgres.server import URL_SETTINGS, check_server_version, connect_admin
from .liveness import TOKEN_CHARS, lock_clause, run_token

Driver = Literal["psycopg", "asyncpg"]
AdminConnection = psycopg.Connection[tuple[Any, ...]]

OWNERSHIP_MARK = "created by anyio-fastapi-testkit"
RUN_ID = f"{os.getpid()}-{secrets.token_hex(4)}"  # this pytest run, in the ownership comments
MAX_NAME_BYTES = 63  # PostgreSQL silently truncates longer identifiers
TEMPLATE_SUFFIX = "_template"
# Where a database is made before it is marked and renamed: <prefix><run token>_<nonce>.
PENDING_PREFIX = "anyio_fastapi_testkit_creating_"
_PENDING_NAME = re.compile(
    rf"{PENDING_PREFIX}([0-9a-f]{{{TOKEN_CHARS}}})_[0-9a-f]{{{TOKEN_CHARS}}}"
)
DEFAULT_BUSY_TIMEOUT = 5.0

_DRIVERNAMES: dict[Driver | None, str] = {
    None: "postgresql",
    "psycopg": "postgresql+psycopg",
    "asyncpg": "postgresql+asyncpg",
}


def test_database_names(
    base_name: str, worker_id: str | None, token: str | None = None
) -> tuple[str, str]:
    """The (template, working) database names for ``base_name`` and an xdist worker.

    ``test_app`` -> ("test_app_template", "test_app"); with worker "gw0" the working
    database is "test_app_gw0". With a run's ``token`` (on a server other runs may share)
    it ends the base: ("test_app_1a2b3c4d_template", "test_app_1a2b3c4d"). Over-long names
    are shortened with a hash to stay unique; the token and the suffixes are kept whole.
    """
    worker = worker_id if worker_id and worker_id != "master" else None
    suffixes = [TEMPLATE_SUFFIX, *([f"_{worker}"] if worker else [])]
    tail = f"_{token}" if token else ""
    room = MAX_NAME_BYTES - len(tail) - max(len(suffix.encode()) for suffix in suffixes)
    base = _fit(f"test_{base_name}", room) + tail
    return f"{base}{TEMPLATE_SUFFIX}", f"{base}_{worker}" if worker else base


test_database_names.__test__ = False  # type: ignore[attr-defined]  # pytest: not a test


def _fit(name: str, limit: int) -> str:
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    if limit < len(digest) + 2:
        raise DatabaseError(
            f"No room for a database name within PostgreSQL's {MAX_NAME_BYTES} bytes: the "
            "xdist worker id is too long. Fix: use fewer or shorter worker names."
        )
    head = name.encode()[: limit - len(digest) - 1].decode(errors="ignore")
    return f"{head}_{digest}"


def database_url(admin_url: URL, name: str, driver: Driver | None) -> URL:
    """The URL of database ``name`` on the admin URL's server, for ``driver`` (None: libpq)."""
    try:
        drivername = _DRIVERNAMES[driver]
    except KeyError:
        raise ValueError(f"driver must be 'psycopg', 'asyncpg' or None, not {driver!r}") from None
    return admin_url.set(drivername=drivername, database=name)


def ownership_comment(run_id: str, *, locked: bool = False) -> str:
    """The comment that marks a database as made by run ``run_id``; ``locked``: guarded by
    the run's advisory lock (see ``liveness``), which the comment names."""
    return f"{OWNERSHIP_MARK}; run {run_id}" + (lock_clause(run_token(run_id)) if locked else "")


def is_run_comment(comment: str, run_id: str) -> bool:
    """Whether ``comment`` marks a database of run ``run_id``."""
    mark = ownership_comment(run_id)
    return comment == mark or comment.startswith(f"{mark};")


def pending_name(run_id: str) -> str:
    """A new name to make a database of run ``run_id`` under, before it is marked."""
    return f"{PENDING_PREFIX}{run_token(run_id)}_{secrets.token_hex(TOKEN_CHARS // 2)}"


def pending_token(name: str) -> str | None:
    """The run token in a pending database's name (None: not a pending name)."""
    found = _PENDING_NAME.fullmatch(name)
    return found.group(1) if found else None


def is_ours(conn: AdminConnection, name: str) -> bool:
    """Whether database ``name`` exists and carries the kit's ownership comment."""
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    comment = row[0] if row else None
    return isinstance(comment, str) and (
        comment == OWNERSHIP_MARK or comment.startswith(f"{OWNERSHIP_MARK};")
    )


def create_database(
    admin_url: URL,
    name: str,
    *,
    template: str | None = None,
    run_id: str = RUN_ID,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    locked: bool = False,
) -> None:
    """Create database ``name`` (a clone of ``template`` if given) and mark it as the kit's.

    A leftover of the kit's (from a killed run) is dropped first; a database of the same
    name that is not the kit's raises ``DatabaseError`` and is left as it is. Cloning waits
    up to ``busy_timeout`` seconds for other sessions to leave the template. ``locked``: the
    run holds its advisory lock while it uses the database, and the mark says so.
    """
    for checked in (name, template):
        if checked is not None:
            _check_name(checked)
    with connect_admin(admin_url) as conn:
        _check_version(conn, admin_url)
        if _exists(conn, name):
            _refuse_foreign(conn, admin_url, name, "recreate")
            _drop(conn, name)
        # CREATE DATABASE cannot share a transaction with COMMENT: a run killed between the
        # two would leave an unmarked database under the final name, which the kit could not
        # tell from somebody else's. It leaves one under a pending name instead.
        pending = pending_name(run_id)
        _create(conn, pending, template, busy_timeout, shown=name)
        try:
            _mark(conn, pending, ownership_comment(run_id, locked=locked), shown=name)
            _rename(conn, pending, name, busy_timeout)
        except BaseException:
            with contextlib.suppress(DatabaseError, psycopg.Error):
                _drop(conn, pending)
            raise


def drop_database(admin_url: URL, name: str) -> None:
    """Drop database ``name`` if it is the kit's; nothing if it does not exist.

    Its sessions are ended (WITH (FORCE)). A database that is not the kit's raises
    ``DatabaseError`` and is left as it is.
    """
    _check_name(name)
    with connect_admin(admin_url) as conn:
        _check_version(conn, admin_url)
        if not _exists(conn, name):
            return
        _refuse_foreign(conn, admin_url, name, "drop")
        _drop(conn, name)


def drop_leftover(admin_url: URL, name: str) -> None:
    """Drop database ``name`` if it is the kit's or a half-made one of the kit's (pending
    name); nothing if it does not exist. Its run must be gone: see ``owned``."""
    _check_name(name)
    with connect_admin(admin_url) as conn:
        if not _exists(conn, name):
            return
        if pending_token(name) is None:
            _refuse_foreign(conn, admin_url, name, "drop")
        _drop(conn, name)


def rename_marked(
    admin_url: URL,
    name: str,
    new_name: str,
    comment: str,
    *,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
) -> bool:
    """Rename the kit's database ``name`` to ``new_name`` and give it ``comment``, in one
    transaction: a kill in between leaves it as it was. False, and nothing changed, when
    ``new_name`` is taken or a session stays on ``name`` for ``busy_timeout`` seconds."""
    for checked in (name, new_name):
        _check_name(checked)
    with connect_admin(admin_url) as conn:
        if not is_ours(conn, name) or _exists(conn, new_name):
            return False
        _wait_until_unused(conn, name, now() + busy_timeout)
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(name), sql.Identifier(new_name)
                    )
                )
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(new_name), sql.Literal(comment)
                    )
                )
        except psycopg.Error:  # taken meanwhile, or a session connected to it
            return False
    return True


def _check_name(name: str) -> None:
    size = len(name.encode())
    if 0 < size <= MAX_NAME_BYTES and "\x00" not in name:
        return
    raise DatabaseError(
        f"Database name {name!r} is {size} bytes; PostgreSQL names must be 1 to "
        f"{MAX_NAME_BYTES} bytes (longer ones are cut, and would name another database). "
        "Fix: use a shorter database name in the URL."
    )


def _check_version(conn: AdminConnection, admin_url: URL) -> None:
    check_server_version(conn.info.server_version, f"The server at {mask_url(admin_url)}")


def _exists(conn: AdminConnection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def _refuse_foreign(conn: AdminConnection, admin_url: URL, name: str, action: str) -> None:
    if is_ours(conn, name):
        return
    raise DatabaseError(
        f"Database {name!r} exists on {mask_url(admin_url)} and was not created by "
        f"anyio-fastapi-testkit (it lacks the kit's comment {OWNERSHIP_MARK!r}); the kit will "
        f"not {action} it, nor touch it in any way. Fix: drop or rename it yourself if "
        f"nobody needs it (DROP DATABASE {sql.Identifier(name).as_string(conn)}), or point "
        f"the database URL ({URL_SETTINGS}) at another database name: the kit names its "
        "databases test_<that name>."
    )


def _create(
    conn: AdminConnection, name: str, template: str | None, busy_timeout: float, *, shown: str
) -> None:
    """CREATE DATABASE ``name``; messages call it ``shown`` (its final name)."""
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    source = template or "template1"
    started = now()
    while True:
        # PostgreSQL itself waits 5 s before refusing a template in use: poll instead, so
        # sessions that are just closing cost little and a busy template fails in time.
        if not _wait_until_unused(conn, source, started + busy_timeout):
            raise DatabaseError(_busy_message(conn, shown, source, started))
        try:
            conn.execute(statement)
            return
        except psycopg.errors.ObjectInUse:
            if now() - started >= busy_timeout:
                raise DatabaseError(_busy_message(conn, shown, source, started)) from None
        except psycopg.Error as exc:
            raise DatabaseError(_failed_message("create", shown, template, exc)) from None


def _rename(conn: AdminConnection, pending: str, name: str, busy_timeout: float) -> None:
    """Give the marked database its final name (a session in it, e.g. autovacuum's, is
    waited for: PostgreSQL renames only a database nobody is connected to)."""
    statement = sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(pending), sql.Identifier(name)
    )
    started = now()
    while True:
        _wait_until_unused(conn, pending, started + busy_timeout)
        try:
            conn.execute(statement)
            return
        except psycopg.errors.ObjectInUse:
            if now() - started >= busy_timeout:
                sessions = _describe_sessions(conn, pending)
                raise DatabaseError(
                    f"Could not rename the new database {pending!r} to {name!r}: PostgreSQL "
                    "renames only a database no other session is connected to, and sessions "
                    f"stayed connected for {now() - started:.1f}s: {sessions}. Fix: connect "
                    "nothing to the kit's databases before it hands them to the tests."
                ) from None
        except psycopg.Error as exc:
            raise DatabaseError(_failed_message("name", name, None, exc)) from None


def _wait_until_unused(conn: AdminConnection, database: str, deadline: float) -> bool:
    """Wait until no other session uses ``database``; False if some still do at the deadline."""
    delay = 0.02
    while _sessions(conn, database):
        if now() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    return True


def _sessions(conn: AdminConnection, database: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT pid, usename, application_name, state FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()


def _busy_message(conn: AdminConnection, name: str, source: str, started: float) -> str:
    sessions = _describe_sessions(conn, source)
    return (
        f"Could not create database {name!r} from template {source!r}: PostgreSQL copies a "
        "template only while no other session is connected to it, and sessions stayed "
        f"connected for {now() - started:.1f}s: {sessions}. "
        f"Fix: close every connection to {source!r} before the copy: dispose the engines "
        "bound to it (engine.dispose() / await engine.dispose()), close its sessions and "
        "pools, and run no tests against the template database itself."
    )


def _describe_sessions(conn: AdminConnection, database: str) -> str:
    sessions = "; ".join(
        f"pid {pid} (user {user}, application {app or '-'}, {state or 'no state'})"
        for pid, user, app, state in _sessions(conn, database)
    )
    return sessions or "they left just now"


def _failed_message(action: str, name: str, template: str | None, exc: psycopg.Error) -> str:
    cloned = f" from template {template!r}" if template else ""
    return (
        f"Could not {action} database {name!r}{cloned}: {str(exc).strip()}. Fix: make sure "
        "the URL's user may create databases (superuser or CREATEDB, and owner of the "
        "databases it drops) and that the template exists."
    )


def _mark(conn: AdminConnection, name: str, comment: str, *, shown: str) -> None:
    statement = sql.SQL("COMMENT ON DATABASE {} IS {}")
    try:
        conn.execute(statement.format(sql.Identifier(name), sql.Literal(comment)))
    except psycopg.Error as exc:
        # Unmarked, it would count as somebody else's forever: undo the creation.
        _drop(conn, name)
        raise DatabaseError(_failed_message("mark", shown, None, exc)) from None


def _drop(conn: AdminConnection, name: str) -> None:
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    try:
        conn.execute(statement)
    except psycopg.Error as exc:
        raise DatabaseError(_failed_message("drop", name, None, exc)) from None
