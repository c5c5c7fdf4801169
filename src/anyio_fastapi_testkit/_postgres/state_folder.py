"""The private folders of the kit's clusters, what they hold, and their removal.

A base folder (per user) holds one state folder per cluster: its data, its log, its unix
socket folder (or a short one elsewhere when the path is too long for a socket) and
``owner.json``, which names the pytest process that made it (see ``orphans``).

A short socket folder elsewhere (``/tmp/testkit-sock-*``) is removed with its cluster's
state folder, or at the stop of a cached cluster; one that a killed run left is removed by the
next start of that cached cluster, or by any run once no server has used it for a while
(``remove_dead_socket_dirs``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from .._core.errors import DatabaseError
from .._core.fixes import URL_SETTINGS
from .processes import pid_running, process_start
from .sysuser import SERVER_USER, as_root, give_to, grant_traversal

OWNER_FILE = "owner.json"
STATE_PREFIX = "run-"

_SOCKET_PATH_LIMIT = 100  # sun_path holds 108 bytes on Linux and 104 on macOS
_OUTSIDE_SOCKET_PREFIX = "testkit-sock-"
_SAFE_PATH = re.compile(r"[A-Za-z0-9._/-]+")
# A short socket folder unchanged for this long, with no server running on it, is a dead
# run's: a live run's gets its server's socket within seconds of its creation.
SOCKET_DIR_GRACE_SECONDS = 600.0
_SOCKET_FILE = re.compile(r"\.s\.PGSQL\.\d+(\.lock)?")


def default_base_dir() -> Path:
    """The per-user folder the state folders of the kit's clusters go in."""
    return Path(tempfile.gettempdir()) / f"anyio-fastapi-testkit-{os.getuid()}"


def prepare_base_dir(base_dir: Path | None) -> Path:
    """Create the base folder (default: ``default_base_dir()``) and return it."""
    base = base_dir or default_base_dir()
    # As root the server user must reach its state folder; listing stays private (0711).
    mode = 0o711 if as_root() else 0o700
    try:
        base.mkdir(mode=mode, parents=True)
        base.chmod(mode)  # mkdir's mode is cut by the umask
    except FileExistsError:
        pass
    except OSError as exc:
        raise DatabaseError(
            f"Could not create the kit's state folder {base}: {exc}. Fix its parent's "
            f"permissions, or set a running server's URL with {URL_SETTINGS}."
        ) from None
    if base_dir is None:
        _check_base_dir(base)
    if as_root():
        # e.g. pytest's /tmp/pytest-of-root is 0700: the server user must pass through it.
        grant_traversal(base)
    remove_dead_socket_dirs()
    return base


def _check_base_dir(base: Path) -> None:
    """The default folder lives in a shared temp dir: refuse one somebody else planted."""
    info = base.lstat()
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022:
        return
    raise DatabaseError(
        f"The kit's state folder {base} is not a folder owned by you and writable only by you "
        f"(owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)}). Fix: remove it (it is "
        f"recreated), or set TMPDIR to another folder, or set a running server's URL with "
        f"{URL_SETTINGS}."
    )


def new_state_dir(
    base: Path, bin_dir: Path, user: str | None, owner_pid: int | None = None
) -> tuple[Path, Path]:
    """Make a state folder in ``base`` and its socket folder, owned by ``user``.

    Returns both; ``owner.json`` in the state folder records ``owner_pid`` (default: this
    process; an xdist worker names its controller, which outlives it) and ``bin_dir``.
    """
    state_dir = Path(tempfile.mkdtemp(prefix=STATE_PREFIX, dir=base))
    socket_dir = None
    try:
        socket_dir = _make_socket_dir(state_dir)
        write_owner(state_dir, bin_dir, socket_dir, owner_pid)
        for path in {state_dir, socket_dir}:
            give_to(path, user)
    except BaseException:
        remove_state(state_dir, socket_dir)
        raise
    return state_dir, socket_dir


def fixed_state_dir(
    state_dir: Path, bin_dir: Path, user: str | None, owner_pid: int | None = None
) -> Path:
    """Prepare the state folder at ``state_dir`` (kept between runs) for a start; its socket folder.

    The folder is made if missing; a socket folder inside it is reused, one outside (for a
    long path) is made anew for each start and removed at the stop.
    """
    state_dir.mkdir(mode=0o700, exist_ok=True)
    # The short socket folder of the last start, if its run was killed before it could
    # remove it (its server is stopped by now, or this start would not be made).
    previous = recorded_socket_dir(read_owner(state_dir))
    inside = state_dir / "s"
    socket_dir = inside if inside.is_dir() else _make_socket_dir(state_dir)
    if previous is not None and previous != socket_dir and _unused_socket_dir(previous):
        shutil.rmtree(previous, ignore_errors=True)
    write_owner(state_dir, bin_dir, socket_dir, owner_pid)
    for path in {state_dir, socket_dir}:
        give_to(path, user)
    return socket_dir


def _make_socket_dir(state_dir: Path) -> Path:
    inside = state_dir / "s"
    if _socket_dir_ok(inside):
        inside.mkdir(mode=0o700)
        return inside
    # The state folder's path is too long (or odd) for a socket: use a short private one.
    outside = Path(tempfile.mkdtemp(prefix=_OUTSIDE_SOCKET_PREFIX, dir=_short_root()))
    if not _socket_dir_ok(outside):
        outside.rmdir()
        raise DatabaseError(
            f"No folder for the server's unix socket has a path short enough (under "
            f"{_SOCKET_PATH_LIMIT} bytes with the socket name): tried {inside} and {outside}. "
            "Fix: pass a shorter base folder, or set TMPDIR to a short path."
        )
    return outside


def _short_root() -> Path:
    return Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())


def _socket_dir_ok(socket_dir: Path) -> bool:
    longest = socket_dir / ".s.PGSQL.65535"
    return len(os.fsencode(longest)) < _SOCKET_PATH_LIMIT and bool(
        _SAFE_PATH.fullmatch(str(socket_dir))
    )


def write_owner(
    state_dir: Path, bin_dir: Path | None, socket_dir: Path | None, owner_pid: int | None = None
) -> None:
    """Write ``owner.json``: the pytest process the folder belongs to, its binaries and socket."""
    pid = owner_pid or os.getpid()
    clock, started = process_start(pid)
    owner = {
        "pid": pid,
        "clock": clock,
        "started": started,
        "bin_dir": str(bin_dir) if bin_dir else None,
        "socket_dir": str(socket_dir) if socket_dir else None,
    }
    write_private_text(state_dir / OWNER_FILE, json.dumps(owner))


def open_private(path: Path, flags: int) -> int:
    """Open ``path``, created if missing, as a file only its owner may read or write (0600,
    also when it existed with a wider mode); the file descriptor."""
    # Not through a link: the server's user owns the folders of its cluster.
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private_text(path: Path, text: str) -> None:
    """Replace ``path`` with a 0600 file holding ``text``; readers never see half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    with os.fdopen(open_private(temporary, os.O_WRONLY | os.O_TRUNC), "w") as handle:
        handle.write(text)
    temporary.replace(path)


def read_owner(state_dir: Path) -> dict[str, Any] | None:
    """The state folder's ``owner.json``; None when it is missing or malformed."""
    try:
        owner = json.loads((state_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def recorded_socket_dir(owner: dict[str, Any] | None) -> Path | None:
    """The socket folder outside the state folder, if owner.json names one the kit made.

    The server user can rewrite owner.json in its own folder: never trust it with an
    arbitrary path to delete.
    """
    recorded = owner.get("socket_dir") if owner else None
    if not isinstance(recorded, str):
        return None
    path = Path(recorded)
    made_by_kit = path.parent == _short_root() and path.name.startswith(_OUTSIDE_SOCKET_PREFIX)
    return path if made_by_kit and not path.is_symlink() else None


def remove_state(state_dir: Path, socket_dir: Path | None) -> None:
    """Delete the state folder, and the socket folder if it lives elsewhere."""
    shutil.rmtree(state_dir, ignore_errors=True)
    if socket_dir is not None and not socket_dir.is_relative_to(state_dir):
        shutil.rmtree(socket_dir, ignore_errors=True)


def remove_dead_socket_dirs(grace: float = SOCKET_DIR_GRACE_SECONDS) -> list[Path]:
    """Delete the short socket folders (``testkit-sock-*``) of this user's clusters (or, as
    root, of the server user's) that no server uses and that nothing changed for ``grace``
    seconds: killed runs left them. Returns the folders deleted.

    A folder holding anything but a server's socket and lock files is never touched.
    """
    owners = _socket_dir_owners()
    removed = []
    try:
        found = sorted(_short_root().glob(f"{_OUTSIDE_SOCKET_PREFIX}*"))
    except OSError:
        return []
    for folder in found:
        # One folder the kit cannot inspect must not keep this run from starting.
        with contextlib.suppress(OSError):
            info = folder.lstat()
            if (
                stat.S_ISDIR(info.st_mode)
                and info.st_uid in owners
                and time.time() - info.st_mtime > grace
                and _unused_socket_dir(folder)
            ):
                shutil.rmtree(folder)
                removed.append(folder)
    return removed


def _socket_dir_owners() -> set[int]:
    owners = {os.getuid()}
    if as_root():
        import pwd

        with contextlib.suppress(KeyError):
            owners.add(pwd.getpwnam(SERVER_USER).pw_uid)
    return owners


def _unused_socket_dir(folder: Path) -> bool:
    """Whether ``folder`` holds only a server's socket files and no running server's.

    PostgreSQL writes its pid in the lock file beside each socket, and removes both when it
    stops; a server killed leaves them, naming a pid that is gone (or, reused, taken for a
    live server: the folder is then kept, which is safe).
    """
    for entry in folder.iterdir():
        if not _SOCKET_FILE.fullmatch(entry.name):
            return False  # not only a server's files: not the kit's to delete
        if entry.name.endswith(".lock"):
            try:
                pid = int(entry.read_text(errors="replace").split()[0])
            except (ValueError, IndexError):
                continue  # a lock file being written, or damaged: no pid to keep it alive
            if pid_running(pid):
                return False
    return True
