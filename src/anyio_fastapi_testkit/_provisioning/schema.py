"""Build the schema once into the template database: ``create_all`` or Alembic ``upgrade head``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from psycopg import sql
from sqlalchemy import MetaData, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from .._core.config import ALEMBIC_PREFIX
from .._core.errors import ConfigError, DatabaseError
from .._core.imports import import_from_path
from .._core.urls import mask_secrets, mask_url
from .._diagnostics.queries import NOT_COUNTED
from .._postgres import children as children
from .._postgres.children import WATCH_PARENT, parent_env
from .foreign_guard import DEFAULT_PORT, ForeignDatabaseError

_ALEMBIC_TIMEOUT = 600.0

# Runs in a fresh interpreter, so that an async env.py may call asyncio.run() and an app's
# cached settings are read from the environment the kit prepared for the template database.
# The URL comes in the environment, never on the command line, which every local user can read
# (ps, /proc/<pid>/cmdline). The guard refuses any connection but to the template: an env.py
# that builds its engine from the app's settings must not migrate another database.
_HEADS_MARK = "anyio-fastapi-testkit heads: "
_ALEMBIC_SCRIPT = f"""{WATCH_PARENT}
import os
import sys

url = os.environ.pop("TESTKIT_ALEMBIC_URL")
database = os.environ.pop("TESTKIT_ALEMBIC_DATABASE")
port = int(os.environ.pop("TESTKIT_ALEMBIC_PORT"))

from anyio_fastapi_testkit._provisioning.foreign_guard import ALEMBIC_ADVICE, Guard

guard = Guard(ALEMBIC_ADVICE)
guard.allow(port, [database])
guard.start()

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

config = Config(sys.argv[1])
config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
command.upgrade(config, "head")
heads = sorted(ScriptDirectory.from_config(config).get_heads())
print()
print({_HEADS_MARK!r} + " ".join(heads))
"""


def load_metadata(source: str) -> MetaData:
    """The MetaData named by ``testkit_schema`` (a declarative base is accepted too)."""
    obj = import_from_path(source, "testkit_schema", what="the models' MetaData")
    metadata = getattr(obj, "metadata", obj)
    if not isinstance(metadata, MetaData):
        raise ConfigError(
            f"testkit_schema = {source!r} is a {type(obj).__name__}, not a SQLAlchemy MetaData. "
            'Name your models\' metadata ("pkg.models:Base.metadata"), or an Alembic config '
            '("alembic:alembic.ini").'
        )
    if not metadata.tables:
        raise ConfigError(
            f"testkit_schema = {source!r} is a MetaData with no tables: the modules that define "
            "the models were not imported when it was read, so the test database would have "
            "no tables. Fix: import the model modules in the module testkit_schema names (e.g. "
            "`from . import models` in the package's __init__.py), or name a module that "
            'imports them all ("pkg.models:Base.metadata"), or use Alembic '
            '("alembic:alembic.ini").'
        )
    return metadata


def build_schema(
    source: str | None,
    sync_url: URL,
    *,
    rootdir: Path,
    env: Mapping[str, str],
) -> None:
    """Create the schema named by ``testkit_schema`` in the database at ``sync_url``."""
    if source is None:
        return
    if source.startswith(ALEMBIC_PREFIX):
        _alembic_upgrade(rootdir / source[len(ALEMBIC_PREFIX) :].strip(), sync_url, env)
        return
    metadata = load_metadata(source)
    engine = create_engine(
        sync_url.set(drivername="postgresql+psycopg"),
        poolclass=NullPool,
        execution_options=NOT_COUNTED,  # the kit's plumbing, not the app's queries
    )
    try:
        with engine.begin() as connection:
            metadata.create_all(connection)
    except Exception as exc:
        raise DatabaseError(
            f"Creating the schema from testkit_schema = {source!r} in "
            f"{mask_url(sync_url)} failed: {type(exc).__name__}: "
            f"{mask_secrets(str(exc), [sync_url.password or ''])}"
        ) from exc
    finally:
        engine.dispose()


def _alembic_upgrade(config_path: Path, url: URL, env: Mapping[str, str]) -> None:
    if not config_path.is_file():
        raise ConfigError(
            f"testkit_schema names the Alembic config {str(config_path)!r}, which does not "
            'exist. Give its path relative to the rootdir ("alembic:alembic.ini"), or name '
            'your models\' metadata instead ("pkg.models:Base.metadata").'
        )
    try:
        import alembic  # noqa: F401
    except ImportError:
        raise ConfigError(
            "testkit_schema names an Alembic config, but Alembic is not installed; "
            "`pip install 'anyio-fastapi-testkit[alembic]'`."
        ) from None
    password = url.password or ""
    # psycopg's dialect serves both a sync and an async env.py; plain "postgresql://" would
    # mean psycopg2 on SQLAlchemy 2.0, which the kit does not install.
    rendered = url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    secret = {
        "TESTKIT_ALEMBIC_URL": rendered,
        "TESTKIT_ALEMBIC_DATABASE": url.database or "",
        "TESTKIT_ALEMBIC_PORT": str(url.port or DEFAULT_PORT),
    }
    completed = children.run(  # ended with pytest, if it is killed meanwhile
        [sys.executable, "-c", _ALEMBIC_SCRIPT, str(config_path)],
        cwd=config_path.parent,
        env={**os.environ, **env, **secret, **parent_env()},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_ALEMBIC_TIMEOUT,
        check=False,
    )
    output = mask_secrets((completed.stderr or "") + (completed.stdout or ""), [password])
    if completed.returncode != 0:
        if ForeignDatabaseError.__name__ in output:
            raise ConfigError(
                f"`alembic upgrade head` with {config_path} did not migrate the kit's template "
                f"database ({mask_url(url)}): its env.py connected elsewhere, and the kit "
                "refused the connection before anything was written. Alembic said:\n"
                f"{_last_lines(output)}"
            )
        raise DatabaseError(
            f"`alembic upgrade head` with {config_path} on {mask_url(url)} failed; "
            f"Alembic said:\n{output.strip()}\n"
            "Fix the migration, or check that env.py takes its URL from "
            "config.get_main_option('sqlalchemy.url') or from the variables set by "
            "testkit_database_env."
        )
    _check_migrated(url, config_path, _reported_heads(completed.stdout or ""))


def _last_lines(output: str, count: int = 15) -> str:
    return "\n".join(output.strip().splitlines()[-count:])


def _reported_heads(stdout: str) -> list[str]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(_HEADS_MARK):
            return line[len(_HEADS_MARK) :].split()
    return []


def _check_migrated(url: URL, config_path: Path, heads: list[str]) -> None:
    """The template holds Alembic's version table at head, and tables: else env.py migrated
    no database, or another one (through a connection the guard did not see)."""
    from .._postgres.server import connect_admin

    fix = (
        f"Check how {config_path.parent / 'env.py'} gets its URL: the kit sets Alembic's "
        "sqlalchemy.url (config.get_main_option('sqlalchemy.url'), what the stock env.py "
        "reads) and the variables of testkit_database_env for the template database."
    )
    if not heads:
        raise ConfigError(
            f"testkit_schema names the Alembic config {config_path}, whose script folder has "
            "no revision: `alembic upgrade head` creates no table. Fix: add the migrations "
            "(`alembic revision --autogenerate`), or name the models' metadata instead "
            '("pkg.models:Base.metadata").'
        )
    with connect_admin(url) as conn:
        versions = _versions(conn)
        row = conn.execute(_TABLES).fetchone()
    count = int(row[0]) if row else 0
    if versions != set(heads):
        found = ", ".join(sorted(versions)) or "no version table"
        raise ConfigError(
            f"After `alembic upgrade head` with {config_path}, the kit's template database "
            f"({mask_url(url)}) is not at head ({', '.join(heads)}): it holds {found}. env.py "
            f"migrated another database, or none. {fix}"
        )
    if count == 0:
        raise ConfigError(
            f"After `alembic upgrade head` with {config_path}, the kit's template database "
            f"({mask_url(url)}) holds Alembic's version but no table: the migrations create "
            f"none there. {fix}"
        )


def _versions(conn: Any) -> set[str]:
    """The revisions in every Alembic version table of the database (any schema)."""
    versions: set[str] = set()
    for schema, table in conn.execute(_VERSION_TABLES).fetchall():
        query = sql.SQL("SELECT version_num FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        versions.update(str(row[0]) for row in conn.execute(query).fetchall())
    return versions


# For the doctor: the heads of the script folder, read without running env.py (in the config's
# folder, where a relative script_location points, as for `upgrade head` above).
_HEADS_SCRIPT = f"""
import sys

from alembic.config import Config
from alembic.script import ScriptDirectory

heads = sorted(ScriptDirectory.from_config(Config(sys.argv[1])).get_heads())
print()
print({_HEADS_MARK!r} + " ".join(heads))
"""


def alembic_config_path(source: str, rootdir: Path) -> Path | None:
    """The Alembic config ``testkit_schema`` names, or None when it names a MetaData."""
    if not source.startswith(ALEMBIC_PREFIX):
        return None
    return rootdir / source[len(ALEMBIC_PREFIX) :].strip()


def check_alembic_template(url: URL, config_path: Path) -> list[str]:
    """The heads of the script folder, which the Alembic version table of the database at
    ``url`` holds; raises ConfigError (as after ``upgrade head``) when it does not."""
    completed = children.run(
        [sys.executable, "-c", _HEADS_SCRIPT, str(config_path)],
        cwd=config_path.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_ALEMBIC_TIMEOUT,
        check=False,
    )
    if completed.returncode != 0:
        output = mask_secrets(completed.stderr + completed.stdout, [url.password or ""])
        raise ConfigError(
            f"Reading the heads of {config_path}'s script folder failed; Alembic said:\n"
            f"{_last_lines(output)}"
        )
    heads = _reported_heads(completed.stdout)
    _check_migrated(url, config_path, heads)
    return heads


_VERSION_TABLES = """
SELECT table_schema, table_name FROM information_schema.columns
WHERE column_name = 'version_num'
  AND table_schema NOT IN ('pg_catalog', 'information_schema')
"""
_TABLES = """
SELECT count(*) FROM information_schema.tables t
WHERE t.table_type = 'BASE TABLE'
  AND t.table_schema NOT IN ('pg_catalog', 'information_schema')
  AND NOT EXISTS (
    SELECT 1 FROM information_schema.columns c
    WHERE c.table_schema = t.table_schema AND c.table_name = t.table_name
      AND c.column_name = 'version_num'
  )
"""
