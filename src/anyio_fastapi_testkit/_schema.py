"""Build the schema once into the template database: ``create_all`` or Alembic ``upgrade head``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import MetaData, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from ._errors import ConfigError, DatabaseError
from ._imports import import_from_path
from ._queries import NOT_COUNTED
from ._urls import mask_secrets, mask_url

ALEMBIC_PREFIX = "alembic:"
_ALEMBIC_TIMEOUT = 600.0

# Runs in a fresh interpreter, so that an async env.py may call asyncio.run() and an app's
# cached settings are read from the environment the kit prepared for the template database.
_ALEMBIC_SCRIPT = """
import sys
from alembic import command
from alembic.config import Config

config = Config(sys.argv[1])
config.set_main_option("sqlalchemy.url", sys.argv[2].replace("%", "%%"))
command.upgrade(config, "head")
"""


def describe(source: str | None) -> str:
    if source is None:
        return "no schema (testkit_schema is unset)"
    return f"testkit_schema = {source!r}"


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
            "`pip install anyio-fastapi-testkit[alembic]`."
        ) from None
    password = url.password or ""
    # psycopg's dialect serves both a sync and an async env.py; plain "postgresql://" would
    # mean psycopg2 on SQLAlchemy 2.0, which the kit does not install.
    rendered = url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    completed = subprocess.run(
        [sys.executable, "-c", _ALEMBIC_SCRIPT, str(config_path), rendered],
        cwd=config_path.parent,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=_ALEMBIC_TIMEOUT,
        check=False,
    )
    if completed.returncode != 0:
        output = mask_secrets((completed.stderr or "") + (completed.stdout or ""), [password])
        raise DatabaseError(
            f"`alembic upgrade head` with {config_path} on {mask_url(url)} failed; "
            f"Alembic said:\n{output.strip()}\n"
            "Fix the migration, or check that env.py takes its URL from "
            "config.get_main_option('sqlalchemy.url') or from the variables set by "
            "testkit_database_env."
        )
