"""Another local user learns no password of a run and gets into no server of it.

While real runs build their template with Alembic, run their tests on two xdist workers, and run
``--testkit-doctor``, a process of the unprivileged user ``nobody`` (forked from this test
process, which must be root to change its user) keeps scanning what any local user can read:
the command line and environment of every process in ``/proc``, and every file and folder the
kit and the sub-session wrote (it is even told their names, as if it could guess them). It
tries the run's server over TCP and over its unix socket without a password, with guessed ones
and as several users. Each run stops twice, in the Alembic ``env.py`` (while the schema
subprocess is alive) and in a test, until the scanner has done a full round: so the scanner
provably looked while the secrets were in use. Afterwards every password the run used must
appear in nothing it read, and no attempt may have got in.

The same pauses record the modes of everything in the kit's folders: files that could hold a
secret are 0600, folders 0700 (0711 only for the folders the server's user must pass through
when pytest runs as root), also after the run for what it keeps (the cached cluster).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import select
import signal
import stat
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import (
    ITEMS_APP,
    SUBSESSION_TIMEOUT,
    Project,
    database_names,
    drop_by_hand,
    plugin_options,
    sql_rows,
)
from scaffolding import items_revision, write_alembic
from sqlalchemy.engine import URL, make_url

from anyio_fastapi_testkit._postgres.cache import FOLDER_PREFIX
from anyio_fastapi_testkit._postgres.server import RunningServer
from anyio_fastapi_testkit._postgres.sysuser import run

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not IS_ROOT or not Path("/proc/self/cmdline").exists(),
    reason="the scanner runs as another user (nobody), which only root can switch to, and reads "
    "/proc (Linux): run these tests as root on Linux",
)

SCANNER_USER = "nobody"
GUESSES: tuple[tuple[str, str | None], ...] = (
    ("postgres", None),
    ("postgres", ""),
    ("postgres", "postgres"),
    ("postgres", "password"),
    ("testkit_postgres", None),
    (SCANNER_USER, None),
)
HANDSHAKE_TIMEOUT = 90.0

# --- the sub-session's project ------------------------------------------------------------------

# Writes the URL it is given (and its pid) to a file only root can read, for the test to learn
# the password, then waits until the test lets it go (after the scanner's round).
HANDSHAKE = """
import json
import os
import time
from pathlib import Path

FOLDER = Path(__file__).parent / "handshake"


def pause(name, url):
    label = f"{os.environ['HANDSHAKE_RUN']}-{name}"
    temporary = FOLDER / f".{label}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"url": str(url), "pid": os.getpid()}, handle)
    temporary.replace(FOLDER / f"{label}.url")
    deadline = time.monotonic() + 90
    while not (FOLDER / f"{label}.go").exists():
        assert time.monotonic() < deadline, f"{label}: never let go"
        time.sleep(0.05)
"""

# As the stock async env.py of an app: the URL comes from the app's settings (DATABASE_URL,
# set by testkit_database_env for the template database).
ASYNC_ALEMBIC_ENV = """
import asyncio
import os

from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine

from handshake import pause

url = os.environ["DATABASE_URL"]
pause("alembic", url)


def migrate(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def main():
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(migrate)
    await engine.dispose()


asyncio.run(main())
"""

SEEDED_REVISION = items_revision("    op.execute(\"INSERT INTO items (name) VALUES ('seeded')\")\n")

TESTS = """
from sqlalchemy import text

from handshake import pause


def test_hand_over(database_url):
    pause("test", database_url)


async def test_migrated(db_session):
    assert await db_session.scalar(text("SELECT name FROM items")) == "seeded"


async def test_the_app(client):
    assert (await client.post("/items", json={"name": "new"})).status_code == 201
"""


def make_project(project: Project) -> None:
    project.module("items_app", ITEMS_APP)
    project.module("handshake", HANDSHAKE)
    project.module("test_items", TESTS)
    project.ini(
        testkit_app="items_app:app",
        testkit_schema="alembic:alembic.ini",
        testkit_session_dependency="items_app:get_session",
        testkit_sessionmaker="items_app:SessionLocal",
        testkit_database_env="DATABASE_URL",
    )
    root = project.pytester.path
    write_alembic(root, {"0001_items.py": SEEDED_REVISION}, env=ASYNC_ALEMBIC_ENV)
    (root / "handshake").mkdir(mode=0o700)


# --- the scanner: a forked child that became nobody ---------------------------------------------


def _become(user: str) -> None:
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    # A process that changed its user is not "dumpable": its own /proc files stay root's.
    # Undo that, so that the scanner reads its own environment like any process of nobody.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    os.environ.clear()  # nothing of this test's environment reaches libpq
    os.environ.update({"HOME": "/nonexistent", "PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    os.chdir("/")


def _read(path: str, limit: int = 1 << 20) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


class _Scan:
    """What the scanner did and saw; everything it read is kept, to be searched afterwards."""

    def __init__(self, roots: list[str]) -> None:
        self.roots = roots
        self.texts: dict[str, str] = {}  # text -> where it was read first
        self.environs = 0
        self.readable: set[str] = set()
        self.listable: set[str] = set()
        self.attempts: list[dict[str, Any]] = []
        self.tried: set[tuple[str, str, int]] = set()

    def keep(self, where: str, raw: bytes) -> None:
        text = raw.replace(b"\0", b" ").decode(errors="replace")
        self.texts.setdefault(text, where)

    def processes(self, paused: int | None) -> bool:
        """Read every command line and environment it may; whether the paused process (the
        Alembic subprocess, a worker) was among them."""
        seen = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = _read(f"/proc/{entry.name}/cmdline")
                self.keep(f"/proc/{entry.name}/cmdline", cmdline)
                seen = seen or entry.name == str(paused)
            with contextlib.suppress(OSError):
                self.keep(f"/proc/{entry.name}/environ", _read(f"/proc/{entry.name}/environ"))
                self.environs += 1
        return seen

    def folders(self, paths: list[str]) -> None:
        """Walk the roots as far as it may, and try every path it was told of."""
        for root in self.roots:
            for folder, _dirs, files in os.walk(root):
                self.listable.add(folder)
                paths = [*paths, *(os.path.join(folder, name) for name in files)]
        for path in paths:
            with contextlib.suppress(OSError):
                os.listdir(path)
                self.listable.add(path)
                continue
            with contextlib.suppress(OSError):
                self.keep(path, _read(path))
                self.readable.add(path)

    def connect(self, targets: list[list[Any]]) -> None:
        for kind, host, port in targets:
            if (kind, host, port) in self.tried:
                continue
            self.tried.add((kind, host, port))
            for user, password in GUESSES:
                params: dict[str, Any] = {"host": host, "port": port, "user": user}
                if password is not None:
                    params["password"] = password
                try:
                    psycopg.connect(dbname="postgres", connect_timeout=10, **params).close()
                    outcome = "connected"
                except psycopg.Error as exc:
                    outcome = str(exc).strip()
                self.attempts.append(
                    {"kind": kind, "port": port, "user": user, "password": password,
                     "outcome": outcome}
                )  # fmt: skip


def _scanner(roots: list[str], control: int, out: int) -> None:
    """The child's work: scan in rounds until told to stop, then report all it gathered."""

    def send(message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(out, data) :]

    _become(SCANNER_USER)
    try:
        os.setuid(0)
        regained = True
    except PermissionError:
        regained = False
    send({"uid": os.getuid(), "euid": os.geteuid(), "regained_root": regained})
    scan = _Scan(roots)
    pending = b""
    paths: list[str] = []
    targets: list[list[Any]] = []
    while True:
        asked: dict[str, Any] | None = None
        while select.select([control], [], [], 0)[0]:
            chunk = os.read(control, 1 << 20)
            if not chunk:  # the test went away
                return
            pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            message = json.loads(line)
            if message.get("stop"):
                send({"texts": scan.texts, "environs": scan.environs,
                      "readable": sorted(scan.readable), "listable": sorted(scan.listable),
                      "attempts": scan.attempts})  # fmt: skip
                return
            asked = message
            paths = message["paths"]
            targets = targets + [t for t in message["targets"] if t not in targets]
        # A full round, begun after the request: what runs and exists now is seen.
        seen = scan.processes(asked["pid"] if asked else None)
        scan.folders(paths)
        scan.connect(targets)
        if asked is not None:
            send({"ack": asked["gen"], "seen": seen})
        else:
            time.sleep(0.02)


class Scanner:
    """The scanner child, seen from the test: ask for rounds, then collect its report."""

    def __init__(self, roots: list[Path]) -> None:
        control_read, self._control = os.pipe()
        out_read, out_write = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork() in a process with threads: the child only scans.
            warnings.filterwarnings("ignore", ".*fork", DeprecationWarning)
            self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            status = 0
            try:
                os.close(self._control)
                os.close(out_read)
                _scanner([str(root) for root in roots], control_read, out_write)
            except BaseException:
                with contextlib.suppress(BaseException):
                    error = json.dumps({"error": traceback.format_exc()}) + "\n"
                    os.write(out_write, error.encode())
                status = 1
            finally:
                os._exit(status)
        os.close(control_read)
        os.close(out_write)
        self._messages: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(out_read,), daemon=True)
        self._reader.start()
        self._gen = 0
        try:
            self.identity = self._wait(lambda m: "uid" in m, 30)
        except BaseException:
            self.close()
            raise

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            for line in stream:
                with self._arrived:
                    self._messages.append(json.loads(line))
                    self._arrived.notify_all()
        with self._arrived:
            self._messages.append({"eof": True})
            self._arrived.notify_all()

    def _wait(self, wanted: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for message in self._messages:
                    if wanted(message):
                        return message
                    if "error" in message or "eof" in message:
                        raise AssertionError(f"the scanner failed: {message}")
                left = deadline - time.monotonic()
                assert left > 0, "the scanner did not answer"
                self._arrived.wait(left)

    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._control, (json.dumps(message) + "\n").encode())

    def round(self, paths: list[str], targets: list[list[Any]], pid: int) -> bool:
        """One full round over the processes, these paths and targets; whether it read the
        command line of ``pid``."""
        self._gen += 1
        gen = self._gen
        self._send({"gen": gen, "paths": paths, "targets": targets, "pid": pid})
        return bool(self._wait(lambda m: m.get("ack") == gen, HANDSHAKE_TIMEOUT)["seen"])

    def report(self) -> dict[str, Any]:
        self._send({"stop": True})
        return self._wait(lambda m: "texts" in m, 60)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._control)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


# --- the runs -----------------------------------------------------------------------------------


@dataclass
class Observed:
    """What the test learned and recorded during the runs of one scenario."""

    passwords: set[str] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    socket_dirs: set[str] = field(default_factory=set)
    modes: dict[str, int] = field(default_factory=dict)  # path -> st_mode, during and after
    handshakes: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)  # pauses whose process was not seen
    outputs: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)


def kit_base(tmpdir: Path) -> Path:
    return tmpdir / f"anyio-fastapi-testkit-{os.getuid()}"


def walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    if not root.exists():
        return
    yield root, root.lstat()
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(folder, name)
            try:
                info = path.lstat()
            except FileNotFoundError:  # the run goes on meanwhile
                continue
            yield path, info


def server_socket_dir(roots: list[Path], port: int) -> str | None:
    for root in roots:
        for path, info in walk(root):
            if path.name == f".s.PGSQL.{port}" and stat.S_ISSOCK(info.st_mode):
                return str(path.parent)
    return None


def run_and_scan(
    project: Project,
    scanner: Scanner,
    observed: Observed,
    roots: list[Path],
    label: str,
    args: list[str],
    pauses: list[str],
    socket_dir: str | None = None,
) -> None:
    """Run pytest with ``args``; at each pause the scanner does a full round first."""
    root = project.pytester.path
    folder = root / "handshake"
    output = root / f"{label}.out"
    env = {**os.environ, "HANDSHAKE_RUN": label}
    options, after = plugin_options(args)
    command = [sys.executable, "-m", "pytest", *options, f"--basetemp={root / label}"]
    with output.open("w") as out:
        process = subprocess.Popen(
            [*command, *args, *after], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            for name in pauses:
                url_file = folder / f"{label}-{name}.url"
                deadline = time.monotonic() + HANDSHAKE_TIMEOUT
                while not url_file.exists() and process.poll() is None:
                    assert time.monotonic() < deadline, f"{label}: no {name} pause"
                    time.sleep(0.05)
                if not url_file.exists():
                    break  # the run ended early: its output says why
                handed = json.loads(url_file.read_text())
                url = make_url(handed["url"])
                assert url.password, f"{label}: the {name} URL has no password"
                observed.passwords.add(url.password)
                observed.ports.add(int(url.port or 5432))
                observed.handshakes.append(f"{label}-{name}")
                paths = []
                for scanned_root in roots:
                    for path, info in walk(scanned_root):
                        paths.append(str(path))
                        observed.modes[str(path)] = info.st_mode
                port = int(url.port or 5432)
                sockets = socket_dir or server_socket_dir(roots, port)
                targets: list[list[Any]] = [["tcp", url.host, port]]
                if sockets is not None:
                    observed.socket_dirs.add(sockets)
                    targets.append(["socket", sockets, port])
                if not scanner.round(paths, targets, handed["pid"]):
                    observed.unseen.append(f"{label}-{name}")
                (folder / f"{label}-{name}.go").touch()
            process.wait(timeout=SUBSESSION_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    observed.outputs.append(f"--- {label} (exit {process.returncode}) ---\n{output.read_text()}")
    assert process.returncode == 0, observed.outputs[-1]
    for path, info in walk(kit_base(Path(os.environ["TMPDIR"]))):  # what the run kept
        observed.modes[str(path)] = info.st_mode


@contextlib.contextmanager
def scanning(roots: list[Path]) -> Iterator[tuple[Scanner, Observed]]:
    observed = Observed()
    scanner = Scanner(roots)
    observed.identity = scanner.identity
    try:
        yield scanner, observed
        observed.report = scanner.report()
    finally:
        scanner.close()


# --- what must hold -----------------------------------------------------------------------------


def assert_nothing_learned(observed: Observed, pauses: int) -> None:
    identity, report = observed.identity, observed.report
    assert identity["uid"] == identity["euid"] == pwd.getpwnam(SCANNER_USER).pw_uid
    assert not identity["regained_root"]
    assert len(observed.handshakes) == pauses, observed.handshakes
    # The scan really looked while the secrets were in use: it read the command line of the
    # paused process (the Alembic subprocess, a worker) at each pause, and its own environment.
    assert observed.unseen == []
    assert any(where.endswith("/cmdline") for where in report["texts"].values())
    assert report["environs"] > 0

    found = {
        where: "a password of the run"
        for text, where in report["texts"].items()
        if any(password in text for password in observed.passwords)
    }
    assert found == {}, f"nobody read a password in: {sorted(found)}"
    assert report["readable"] == [], "nobody could read these files"
    assert report["listable"] == [], "nobody could list these folders"

    attempts = report["attempts"]
    assert [a for a in attempts if a["outcome"] == "connected"] == []
    assert {a["port"] for a in attempts if a["kind"] == "tcp"} == observed.ports
    for attempt in attempts:
        # Each attempt reached the server (or the socket's folder) and was turned away there.
        expected = "password" if attempt["kind"] == "tcp" else "Permission denied"
        assert expected in attempt["outcome"], attempt
    assert observed.socket_dirs, "the run's unix socket was never found"
    assert {a["port"] for a in attempts if a["kind"] == "socket"} == observed.ports


def assert_private(observed: Observed, kit_root: Path, written: set[str]) -> None:
    """Every file 0600 (or stricter), every folder 0700; only the folders the server's user
    passes through as root (the kit's base folder, the cache folders) may be 0711. ``written``:
    names of what the kit writes that must have been among them (so the check checked)."""
    base = kit_base(kit_root)
    passages = {base, *base.glob(f"{FOLDER_PREFIX}*")}
    problems = []
    for name, mode in observed.modes.items():
        path = Path(name)
        if not path.is_relative_to(base) or stat.S_ISSOCK(mode):
            continue  # a socket's access is its folder's
        permissions = stat.S_IMODE(mode)
        if stat.S_ISDIR(mode):
            allowed = {0o700, 0o711} if path in passages else {0o700}
            if permissions not in allowed:
                problems.append(f"{name}: folder {oct(permissions)}")
        elif not stat.S_ISREG(mode) or permissions & 0o077:
            problems.append(f"{name}: {stat.filemode(mode)}")
    assert problems == []
    seen = {Path(name).name for name in observed.modes if Path(name).is_relative_to(base)}
    assert written <= seen, f"never seen: {sorted(written - seen)}"


# What the kit writes: the xdist run folder (its lock, owner record and the server's record,
# with the admin URL); a cluster's state folder (owner record, log, data, socket folder); a
# cache folder (its lock, project record and marker, with the cluster's password).
RUN_FILES = {"lock", "owner.json", "server.json"}
CLUSTER_FILES = {"owner.json", "server.log", "data", "postmaster.pid", "pg_hba.conf", "s"}
CACHE_FILES = {"lock", "project.json", "cache.json", "cluster"}


# --- the scenarios ------------------------------------------------------------------------------


@needs_root
def test_an_embedded_server_fresh(project: Project, private_tmpdir: Path) -> None:
    make_project(project)
    roots = [kit_base(private_tmpdir), project.pytester.path]
    with scanning([private_tmpdir, project.pytester.path]) as (scanner, observed):
        fresh = ["-p", "no:cacheprovider"]
        run_and_scan(
            project, scanner, observed, roots, "xdist", [*fresh, "-n", "2"], ["alembic", "test"]
        )
        run_and_scan(
            project, scanner, observed, roots, "doctor", [*fresh, "--testkit-doctor"], ["alembic"]
        )
    assert len(observed.passwords) == 2, "each run has a password of its own"
    assert_nothing_learned(observed, 3)
    assert_private(observed, private_tmpdir, RUN_FILES | CLUSTER_FILES)
    assert "WARN" not in observed.outputs[-1]


@needs_root
def test_an_embedded_server_cached(project: Project, private_tmpdir: Path) -> None:
    make_project(project)
    roots = [kit_base(private_tmpdir), project.pytester.path]
    with scanning([private_tmpdir, project.pytester.path]) as (scanner, observed):
        run_and_scan(project, scanner, observed, roots, "cold", ["-n", "2"], ["alembic", "test"])
        # The warm run reuses the cluster (same password) and its template (no Alembic).
        run_and_scan(project, scanner, observed, roots, "warm", ["-n", "2"], ["test"])
    assert not (project.pytester.path / "handshake" / "warm-alembic.url").exists()
    assert len(observed.passwords) == 1, "the cached cluster keeps its password"
    assert_nothing_learned(observed, 3)
    assert_private(observed, private_tmpdir, RUN_FILES | CLUSTER_FILES | CACHE_FILES)


@pytest.fixture
def configured(pg_server: RunningServer, private_tmpdir: Path) -> Iterator[URL]:
    """The configured URL, in the environment (as the docs recommend); the databases the runs
    make are dropped."""
    admin = pg_server.info.admin_url
    before = set(database_names(admin))
    sql_rows(admin, "CREATE DATABASE secdb")
    url = admin.set(database="secdb")
    yield url
    for name in set(database_names(admin)) - before:
        drop_by_hand(admin, name)


@needs_root
def test_a_configured_server(
    project: Project,
    private_tmpdir: Path,
    pg_server: RunningServer,
    configured: URL,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_project(project)
    assert pg_server.state_dir is not None and pg_server.socket_dir is not None
    server_folder = pg_server.state_dir.parent
    roots = [kit_base(private_tmpdir), project.pytester.path]
    scanned = [private_tmpdir, project.pytester.path, server_folder]
    with scanning(scanned) as (scanner, observed):
        # Set after the scanner forked: the URL is not in the scanner's environment.
        monkeypatch.setenv("TESTKIT_DATABASE_URL", configured.render_as_string(hide_password=False))
        socket_dir = str(pg_server.socket_dir)
        run_and_scan(
            project, scanner, observed, roots, "xdist", ["-n", "2"], ["alembic", "test"], socket_dir
        )
        # The first run kept its template on the server: the doctor builds one anew, so that
        # the scanner also looks while Alembic runs for it.
        run_and_scan(
            project,
            scanner,
            observed,
            roots,
            "doctor",
            ["--testkit-fresh-db", "--testkit-doctor"],
            ["alembic"],
            socket_dir,
        )
    assert observed.passwords == {configured.password}
    assert_nothing_learned(observed, 3)
    assert_private(observed, private_tmpdir, RUN_FILES)
    assert "WARN" not in observed.outputs[-1]


def test_the_servers_tools_get_no_configured_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """initdb, pg_ctl and the server itself (as the server's user, when pytest runs as root)
    get the environment without the configured URL and the kit's own variables."""
    monkeypatch.setenv("TESTKIT_DATABASE_URL", "postgresql://me:s3cret-pw@db.example/app")
    monkeypatch.setenv("PGPASSWORD", "s3cret-pw")
    result = run(["env"], None, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "PATH=" in result.stdout
    assert "s3cret-pw" not in result.stdout
