"""The embedded server's start and stop end when the server is ready or gone (issue 19).

pg_ctl -w looks every 100 ms; the kit looks every few ms itself and ends pg_ctl then. Real
clusters throughout: what is checked is what a caller relies on right after ``start`` or
``shutdown`` returns, with nothing waited for in between.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from conftest import SUBSESSION_TIMEOUT, postgres_processes_under

from anyio_fastapi_testkit._core.errors import DatabaseError
from anyio_fastapi_testkit._postgres.cluster import Cluster, _end, _race_pg_ctl, shutdown
from anyio_fastapi_testkit._postgres.processes import is_postmaster_of
from anyio_fastapi_testkit._postgres.server import RunningServer
from anyio_fastapi_testkit._postgres.sysuser import spawn


@pytest.fixture
def cluster(pg_server: RunningServer) -> Iterator[Cluster]:
    """The module's embedded cluster (``pg_server``), running again after each test."""
    cluster = pg_server._cluster
    assert cluster is not None
    settings = dict(cluster.settings)
    yield cluster
    cluster.settings = settings
    if not is_postmaster_of(postmaster_pid(cluster), cluster.data_dir):
        cluster.start()


def postmaster_pid(cluster: Cluster) -> int:
    try:
        return int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def our_children(name: str) -> list[psutil.Process]:
    """This process's children (zombies included: an unreaped child counts) named ``name``."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == name:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_start_returns_with_the_server_ready_and_pg_ctl_ended(cluster: Cluster) -> None:
    shutdown(cluster.data_dir, cluster.bin_dir, modes=("fast",))
    cluster.start()

    lines = (cluster.data_dir / "postmaster.pid").read_text().splitlines()
    assert lines[7].strip() == "ready"
    assert int(lines[3]) == cluster.port
    assert is_postmaster_of(int(lines[0]), cluster.data_dir)
    url = cluster.admin_url().render_as_string(hide_password=False)
    with psycopg.connect(url, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert our_children("pg_ctl") == []  # ended and reaped, not left waiting or a zombie


def test_stop_returns_with_the_server_gone_and_pg_ctl_ended(cluster: Cluster) -> None:
    postmaster = postmaster_pid(cluster)
    assert is_postmaster_of(postmaster, cluster.data_dir)

    shutdown(cluster.data_dir, cluster.bin_dir, modes=("fast",))

    assert not (cluster.data_dir / "postmaster.pid").exists()
    assert not psutil.pid_exists(postmaster) or (
        psutil.Process(postmaster).status() == psutil.STATUS_ZOMBIE
    )
    assert postgres_processes_under(cluster.state_dir) == []
    assert our_children("pg_ctl") == []


def test_a_ready_pid_file_counts_only_from_the_server_this_start_launched(
    cluster: Cluster,
) -> None:
    pid_file = cluster.data_dir / "postmaster.pid"
    running = pid_file.read_text()
    lines = running.splitlines()
    started = int(lines[2])
    assert cluster._ready(launched=time.time())
    assert not cluster._ready(launched=started + 10)  # a server older than this start

    shutdown(cluster.data_dir, cluster.bin_dir, modes=("fast",))
    # The file a killed server leaves behind, still saying "ready", on this start's port.
    fresh = [lines[0], lines[1], str(int(time.time())), *lines[3:]]
    pid_file.write_text("\n".join(fresh) + "\n")
    try:
        assert not cluster._ready(launched=time.time())  # its pid runs no server now
        # ... nor when that pid is now another process's (this one's).
        pid_file.write_text("\n".join([str(os.getpid()), *fresh[1:]]) + "\n")
        assert not cluster._ready(launched=time.time())
    finally:
        pid_file.unlink()


def test_a_start_that_fails_reports_pg_ctl_and_the_server_log(cluster: Cluster) -> None:
    shutdown(cluster.data_dir, cluster.bin_dir, modes=("fast",))
    cluster.settings = {"work_mem": "plenty"}

    with pytest.raises(DatabaseError) as failed:
        cluster.start()

    message = str(failed.value)
    assert "PostgreSQL did not start (pg_ctl exit 1)" in message
    assert "could not start server" in message  # pg_ctl's own words
    assert 'invalid value for parameter "work_mem"' in message  # the log's tail
    assert postgres_processes_under(cluster.state_dir) == []
    assert our_children("pg_ctl") == []


def test_the_wait_ends_its_pg_ctl_when_done_at_its_bound_and_when_interrupted(
    tmp_path: Path,
) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    command = [sleep, "600"]  # stands in for a pg_ctl that would wait long

    done = _race_pg_ctl(command, None, tmp_path, timeout=600, done=lambda: True)
    assert done.returncode == 0
    assert our_children("sleep") == []

    bounded = _race_pg_ctl(command, None, tmp_path, timeout=0.2, done=lambda: False)
    assert bounded.returncode == -1
    assert "timed out after 0.2 s" in bounded.stderr
    assert our_children("sleep") == []

    def interrupted() -> bool:  # and again while it waits for pg_ctl: a second Ctrl-C
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _race_pg_ctl(command, None, tmp_path, timeout=600, done=interrupted)
    assert our_children("sleep") == []

    failed = _race_pg_ctl([sleep, "nonsense"], None, tmp_path, timeout=600, done=lambda: False)
    assert failed.returncode != 0  # its own exit and message, as pg_ctl's failures are told
    assert "nonsense" in failed.stdout + failed.stderr


def test_an_interrupted_wait_lets_its_pg_ctl_finish_what_it_began(tmp_path: Path) -> None:
    # A start interrupted after pg_ctl forked the server, before the server wrote its pid
    # file, would leave a server nobody can find: pg_ctl, in a session of its own (out of
    # reach of the terminal's Ctrl-C), is let finish, within a bound.
    shell = shutil.which("sh")
    assert shell is not None
    finished = tmp_path / "finished"
    ids = tmp_path / "ids"  # its pid, then its session's id (field 6 of /proc/PID/stat)
    script = f"echo $$ $(cut -d' ' -f6 /proc/$$/stat) > {ids}; sleep 0.3; touch {finished}"
    command = [shell, "-c", script]
    calls = []

    def interrupted_once() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        _race_pg_ctl(command, None, tmp_path, timeout=600, done=interrupted_once)
    assert finished.exists()
    pid, session = ids.read_text().split()
    assert session == pid  # it led a session of its own
    assert our_children("sh") == []


def test_ending_pg_ctl_does_not_wait_on_the_lock_an_interrupted_poll_left_taken(
    tmp_path: Path,
) -> None:
    # A KeyboardInterrupt inside Popen.poll() can leave Popen's private _waitpid_lock taken
    # (a CPython race); Popen.wait() would then block for ever. Taken by hand here.
    sleep = shutil.which("sleep")
    assert sleep is not None
    with (tmp_path / "output").open("wb") as output:
        process = spawn([sleep, "600"], None, tmp_path, output)
    assert process._waitpid_lock.acquire(False)  # type: ignore[attr-defined]
    ended = threading.Thread(target=_end, args=(process,), daemon=True)
    ended.start()
    ended.join(SUBSESSION_TIMEOUT)
    assert not ended.is_alive(), "ending pg_ctl waited on Popen's lock"
    assert process.returncode == -signal.SIGKILL
    assert our_children("sleep") == []


def test_pg_ctl_started_without_waiting_gets_no_configured_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with ``run``: the environment without the configured URL and the kit's variables."""
    monkeypatch.setenv("TESTKIT_DATABASE_URL", "postgresql://me:s3cret-pw@db.example/app")
    monkeypatch.setenv("PGPASSWORD", "s3cret-pw")
    env = shutil.which("env")
    assert env is not None
    with (tmp_path / "output").open("wb") as output:
        process = spawn([env], None, tmp_path, output)
    assert process.wait(timeout=30) == 0
    stdout = (tmp_path / "output").read_text()
    assert "PATH=" in stdout
    assert "s3cret-pw" not in stdout
