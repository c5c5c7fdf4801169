"""A digest of what ``testkit_schema`` would build, so a cached template is reused only for it.

Metadata: the DDL that ``create_all`` would run, compiled for PostgreSQL (the same whatever the
driver). Alembic: the config file and every file of the migration scripts' folders.
"""

from __future__ import annotations

import configparser
import hashlib
import re
from pathlib import Path
from typing import Any

from sqlalchemy import create_mock_engine

from .._core.config import ALEMBIC_PREFIX
from .schema import load_metadata

_SKIPPED_PARTS = ("__pycache__",)
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def schema_fingerprint(source: str | None, rootdir: Path) -> str | None:
    """The digest of the schema ``source`` builds; None when it cannot be told (no reuse).

    May import the models module (as building the schema does).
    """
    digest = hashlib.sha256()
    if source is None:
        digest.update(b"no schema")
    elif source.startswith(ALEMBIC_PREFIX):
        config_path = rootdir / source[len(ALEMBIC_PREFIX) :].strip()
        if not _hash_alembic(config_path, digest):
            return None
    else:
        statements = _create_all_ddl(source)
        if statements is None:
            return None
        digest.update(b"metadata\x00")
        for statement in statements:
            digest.update(statement.encode() + b"\x00")
    return digest.hexdigest()


def _create_all_ddl(source: str) -> list[str] | None:
    metadata = load_metadata(source)
    statements: list[str] = []

    def record(clause: Any, *multiparams: Any, **params: Any) -> None:
        statements.append(str(clause.compile(dialect=engine.dialect)).strip())

    engine = create_mock_engine("postgresql+psycopg://", record)
    try:
        metadata.create_all(engine, checkfirst=False)
    except Exception:  # e.g. an event listener that needs a real connection
        return None
    return statements


def _hash_alembic(config_path: Path, digest: Any) -> bool:
    folders = _alembic_folders(config_path)
    if folders is None:
        return False
    digest.update(b"alembic\x00" + config_path.read_bytes())
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not _skipped(path):
                digest.update(str(path.relative_to(folder)).encode() + b"\x00")
                digest.update(path.read_bytes() + b"\x00")
    return True


def _alembic_folders(config_path: Path) -> list[Path] | None:
    """The script folder and version folders the config names; None when unreadable."""
    parser = configparser.ConfigParser(defaults={"here": str(config_path.parent)})
    try:
        parser.read(config_path)
        location = parser.get("alembic", "script_location")
        versions = parser.get("alembic", "version_locations", fallback="")
    except (OSError, configparser.Error):
        return None
    folders = [config_path.parent / location]  # relative to the config: the kit runs it there
    folders += [config_path.parent / part for part in re.split(r"[\s,;:]+", versions) if part]
    existing = [folder for folder in folders if folder.is_dir()]
    # "package:folder" script locations are not followed: no reuse rather than a wrong one.
    return existing if existing and existing[0] == folders[0] else None


def _skipped(path: Path) -> bool:
    return path.suffix in _SKIPPED_SUFFIXES or any(part in _SKIPPED_PARTS for part in path.parts)
