"""The cluster and template cached between runs: reused when fit, rebuilt when not, bypassed on
request, never shared by two runs at once.

Each sub-session runs with pytest's cache provider on (the cache's pointer lives there) and in
a private TMPDIR (the cached cluster lives in the kit's base folder inside it). A test of the
sub-session records what the server was: its system identifier changes with every initdb, the
template's oid with every rebuild of the template.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ITEMS_APP, SUBSESSION_TIMEOUT, Project, leftovers, postgres_processes_under

from anyio_fastapi_testkit._postgres import cache as _cache
from anyio_fastapi_testkit._postgres.cache import (
    CACHE_KEY,
    FOLDER_PREFIX,
    LOCK_FILE,
    MARKER_FILE,
    stop_abandoned,
    try_lock,
)
from anyio_fastapi_testkit._postgres.orphans import cleanup_orphans
from anyio_fastapi_testkit._provisioning.fingerprint import schema_fingerprint

RECORDING_TESTS = """
import json
import os
import time
from pathlib import Path

import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from items_app import Item


def rows(url, statement):
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        return conn.execute(statement).fetchall()


def test_record_the_server(database_url):
    url = make_url(str(database_url)).set(drivername="postgresql")
    system = rows(url, "SELECT system_identifier FROM pg_control_system()")[0][0]
    template = rows(url, "SELECT oid FROM pg_database WHERE datname = 'test_app_template'")
    working = rows(url, "SELECT oid FROM pg_database WHERE datname = current_database()")
    columns = rows(url, "SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = 'items' ORDER BY column_name")
    spare = None
    deadline = time.monotonic() + 30
    while os.environ.get("WAIT_FOR_SPARE") and spare is None and time.monotonic() < deadline:
        found = rows(url, "SELECT oid FROM pg_database WHERE datname LIKE 'test_spare_%' "
                          "AND shobj_description(oid, 'pg_database') IS NOT NULL")
        spare = found[0][0] if found else time.sleep(0.05)
    names = rows(url, "SELECT datname FROM pg_database ORDER BY datname")
    record = {
        "system": str(system),
        "spare": spare,
        "template": template[0][0] if template else None,
        "working": working[0][0],
        "database": url.database,
        "databases": [name for (name,) in names],
        "data_directory": rows(url, "SHOW data_directory")[0][0],
        "columns": [name for (name,) in columns],
    }
    with Path("runs.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\\n")
    if os.environ.get("KILL_PYTEST"):
        os.kill(os.getpid(), 9)  # a run killed with its cached server running


async def test_rows_are_rolled_back(db_session):
    assert await db_session.scalar(select(func.count(Item.id))) == 0
    db_session.add(Item(name="pen"))
    await db_session.flush()
"""


class CachedProject:
    """A project run with the cache provider on, recording each run's server."""

    def __init__(self, project: Project, tmpdir: Path) -> None:
        self.project = project
        self.tmpdir = tmpdir
        project.module("items_app", ITEMS_APP)
        project.ini(testkit_app="items_app:app", testkit_schema="items_app:Base.metadata")
        project.module("test_recording", RECORDING_TESTS)

    @property
    def path(self) -> Path:
        return self.project.pytester.path

    def run(self, *args: str, passed: int = 2, beside_cache_user: bool = False) -> dict[str, Any]:
        result = self.project.pytester.runpytest_subprocess(
            "-p", "no:randomly", *args, timeout=SUBSESSION_TIMEOUT
        )
        result.assert_outcomes(passed=passed)
        left = leftovers(self.tmpdir)
        if beside_cache_user:  # another run's cached server is running: not this run's
            cached = {
                f"pid {process.pid}:"
                for folder in self.cache_folders()
                for process in postgres_processes_under(folder)
            }
            left = [item for item in left if not _listed(item, cached)]
        assert left == [], "a server or throwaway cluster was left behind"
        return self.last_run()

    def last_run(self) -> dict[str, Any]:
        lines = (self.path / "runs.jsonl").read_text().splitlines()
        record: dict[str, Any] = json.loads(lines[-1])
        return record

    def cache_folders(self) -> list[Path]:
        base = self.tmpdir / f"anyio-fastapi-testkit-{os.getuid()}"
        return sorted(base.glob(f"{FOLDER_PREFIX}*"))

    def cache_folder(self) -> Path:
        folders = self.cache_folders()
        assert len(folders) == 1, folders
        return folders[0]

    def marker(self) -> dict[str, Any]:
        marker: dict[str, Any] = json.loads((self.cache_folder() / MARKER_FILE).read_text())
        return marker

    def edit_marker(self, **changes: object) -> None:
        path = self.cache_folder() / MARKER_FILE
        path.write_text(json.dumps({**self.marker(), **changes}))


@pytest.fixture
def cached(project: Project, private_tmpdir: Path) -> CachedProject:
    return CachedProject(project, private_tmpdir)


def _listed(item: str, pids: set[str]) -> bool:
    return any(item.startswith(pid) for pid in pids)


def in_cache(record: dict[str, Any], cached: CachedProject) -> bool:
    return Path(record["data_directory"]).is_relative_to(cached.cache_folder())


# --- reuse ---------------------------------------------------------------------------------


def test_a_warm_run_reuses_the_cached_cluster_and_template(cached: CachedProject) -> None:
    first = cached.run()
    assert in_cache(first, cached)
    assert first["database"] == "test_app"
    assert first["template"] is not None
    marker = cached.marker()
    assert marker["template_key"]
    pointer = cached.path / ".pytest_cache" / "v" / CACHE_KEY
    assert json.loads(pointer.read_text())["folder"] == str(cached.cache_folder())

    second = cached.run()

    assert second["system"] == first["system"], "initdb ran again"
    assert second["template"] == first["template"], "the template was rebuilt"
    assert second["data_directory"] == first["data_directory"]
    assert cached.marker() == marker
    # Between runs the server is stopped and only the template and a spare clone are kept.
    assert not (cached.cache_folder() / "cluster" / "data" / "postmaster.pid").exists()


def test_a_warm_run_gets_its_database_from_the_spare_made_by_the_run_before(
    cached: CachedProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAIT_FOR_SPARE", "1")  # each run records the spare it made
    first = cached.run()
    assert first["spare"] is not None, "the cold run made a spare in the background"
    second = cached.run()
    assert second["working"] == first["spare"], "the warm run renamed the spare"
    assert second["spare"] is not None and second["spare"] != first["spare"]
    third = cached.run()
    assert third["working"] == second["spare"]
    kit_databases = sorted(name for name in third["databases"] if name.startswith("test_"))
    spares = [name for name in kit_databases if name.startswith("test_spare_")]
    assert kit_databases == sorted(["test_app", "test_app_template", *spares])
    assert len(spares) == 1


def test_the_warm_run_drops_what_a_killed_run_left_and_restarts_its_server(
    cached: CachedProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = cached.run()
    monkeypatch.setenv("KILL_PYTEST", "1")
    result = cached.project.pytester.runpytest_subprocess(
        "-p", "no:randomly", "-k", "record", timeout=SUBSESSION_TIMEOUT
    )
    assert result.ret != 0  # killed
    killed = cached.last_run()
    assert killed["system"] == first["system"]
    left = postgres_processes_under(cached.cache_folder())
    assert left, "killing pytest leaves its cached server running"
    monkeypatch.delenv("KILL_PYTEST")

    after = cached.run()

    assert after["system"] == first["system"]  # recovered, not rebuilt
    assert after["template"] == first["template"]
    assert not any(process.is_running() for process in left if _alive(process))


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- rebuilds ------------------------------------------------------------------------------


def test_a_schema_change_rebuilds_the_template_in_the_same_cluster(
    cached: CachedProject,
) -> None:
    first = cached.run()
    source = (cached.path / "items_app.py").read_text()
    changed = source.replace(
        "    name: Mapped[str] = mapped_column(String(100), unique=True)\n",
        "    name: Mapped[str] = mapped_column(String(100), unique=True)\n"
        "    colour: Mapped[str | None] = mapped_column(String(20))\n",
    )
    assert changed != source
    (cached.path / "items_app.py").write_text(changed)
    old_key = cached.marker()["template_key"]

    second = cached.run()

    assert second["system"] == first["system"]  # the cluster is kept: no initdb
    assert second["template"] != first["template"]
    assert "colour" in second["columns"] and "colour" not in first["columns"]
    assert cached.marker()["template_key"] not in (None, old_key)


@pytest.mark.parametrize(
    "damage",
    ["no-completion-mark", "no-marker", "corrupt-data", "data-folder-gone", "cache-cleared"],
)
def test_a_half_built_or_damaged_cache_is_rebuilt(cached: CachedProject, damage: str) -> None:
    first = cached.run()
    cluster = cached.cache_folder() / "cluster"
    args: tuple[str, ...] = ()
    if damage == "no-completion-mark":
        cached.edit_marker(template_key=None)  # as left by a run killed while building
    elif damage == "no-marker":
        (cached.cache_folder() / MARKER_FILE).unlink()  # as left by a run killed in initdb
    elif damage == "corrupt-data":
        (cluster / "data" / "global" / "pg_control").write_bytes(b"garbage")
    elif damage == "data-folder-gone":
        shutil.rmtree(cluster)
    else:
        args = ("--cache-clear",)

    second = cached.run(*args)

    assert in_cache(second, cached)
    if damage == "no-completion-mark":
        assert second["system"] == first["system"]
        assert second["template"] != first["template"]
    else:
        assert second["system"] != first["system"], "a damaged cluster must be made anew"
    assert cached.marker()["template_key"]
    third = cached.run()
    assert (third["system"], third["template"]) == (second["system"], second["template"])


# --- bypass and concurrency ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env", "ini"])
def test_fresh_db_bypasses_the_cache(
    cached: CachedProject, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    first = cached.run()
    marker = cached.marker()
    args: tuple[str, ...] = ()
    if how == "flag":
        args = ("--testkit-fresh-db",)
    elif how == "env":
        monkeypatch.setenv("TESTKIT_FRESH_DB", "1")
    else:
        args = ("-o", "testkit_fresh_db=true")

    fresh = cached.run(*args)

    assert fresh["system"] != first["system"]
    assert not in_cache(fresh, cached)
    assert cached.marker() == marker  # untouched
    monkeypatch.delenv("TESTKIT_FRESH_DB", raising=False)
    again = cached.run()
    assert (again["system"], again["template"]) == (first["system"], first["template"])


WAITING_TEST = """
import time
from pathlib import Path

def test_hold_the_cache(database_url):
    Path("holding").write_text(str(database_url))
    deadline = time.monotonic() + 60
    while not Path("release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def test_a_concurrent_run_uses_a_throwaway_cluster_and_leaves_the_cache_alone(
    cached: CachedProject,
) -> None:
    first = cached.run()
    cached.project.module("test_waiting", WAITING_TEST)
    holder = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-q", "-k", "hold"],
        cwd=cached.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + SUBSESSION_TIMEOUT
        while not (cached.path / "holding").exists() and time.monotonic() < deadline:
            assert holder.poll() is None, holder.communicate()[0]
            time.sleep(0.05)
        # While the first run holds the cache:
        second = cached.run("-k", "not hold", beside_cache_user=True)
    finally:
        (cached.path / "release").write_text("")
        output = holder.communicate(timeout=SUBSESSION_TIMEOUT)[0]
    assert holder.returncode == 0, output
    assert second["system"] != first["system"]
    assert not in_cache(second, cached)
    third = cached.run("-k", "not hold")
    assert (third["system"], third["template"]) == (first["system"], first["template"])
    assert leftovers(cached.tmpdir) == []


def test_without_the_cache_provider_nothing_is_cached(
    cached: CachedProject,
) -> None:
    cached.project.run()  # Project.run disables the cache provider
    assert cached.cache_folders() == []
    assert leftovers(cached.tmpdir) == []


# --- orphans and fingerprints ----------------------------------------------------------------


def test_orphan_cleanup_stops_an_abandoned_cached_server_and_keeps_its_cluster(
    cached: CachedProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = cached.run()
    monkeypatch.setenv("KILL_PYTEST", "1")
    cached.project.pytester.runpytest_subprocess(
        "-p", "no:randomly", "-k", "record", timeout=SUBSESSION_TIMEOUT
    )
    monkeypatch.delenv("KILL_PYTEST")
    folder = cached.cache_folder()
    assert postgres_processes_under(folder)
    base = folder.parent

    assert cleanup_orphans(base) == []  # removes no cache
    assert stop_abandoned(base) == [folder]

    deadline = time.monotonic() + 10
    while postgres_processes_under(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert postgres_processes_under(folder) == []
    assert (folder / "cluster" / "data" / "PG_VERSION").exists()
    again = cached.run()
    assert (again["system"], again["template"]) == (first["system"], first["template"])


MODELS = """
from sqlalchemy import Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(LENGTH))
"""


def test_the_fingerprint_follows_the_ddl_and_the_migration_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    prints = []
    for name, length in (("models_a", 100), ("models_b", 100), ("models_c", 200)):
        (tmp_path / f"{name}.py").write_text(MODELS.replace("LENGTH", str(length)))
        prints.append(schema_fingerprint(f"{name}:Base.metadata", tmp_path))
    assert prints[0] == prints[1] != prints[2]  # the DDL, not the module, counts
    assert schema_fingerprint(None, tmp_path) == schema_fingerprint(None, tmp_path)

    versions = tmp_path / "migrations" / "versions"
    versions.mkdir(parents=True)
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    (versions / "0001.py").write_text("revision = '0001'\n")
    before = schema_fingerprint("alembic:alembic.ini", tmp_path)
    (versions / "__pycache__").mkdir()
    (versions / "__pycache__" / "0001.cpython-311.pyc").write_bytes(b"\x00")
    assert schema_fingerprint("alembic:alembic.ini", tmp_path) == before  # bytecode ignored
    (versions / "0002.py").write_text("revision = '0002'\n")
    assert schema_fingerprint("alembic:alembic.ini", tmp_path) not in (None, before)
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = pkg:migrations\n")
    assert schema_fingerprint("alembic:alembic.ini", tmp_path) is None  # not followed: no reuse


def run_copy(path: Path) -> dict[str, Any]:
    """Run a copy of the cached project (in a folder of its own) and return its record."""
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-q"],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=SUBSESSION_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    record: dict[str, Any] = json.loads((path / "runs.jsonl").read_text().splitlines()[-1])
    return record


def test_the_cache_of_a_moved_project_replaces_the_old_one(cached: CachedProject) -> None:
    first = cached.run()
    old = cached.cache_folder()
    moved = cached.path.parent / f"{cached.path.name}-moved"
    shutil.copytree(cached.path, moved)  # with its .pytest_cache, whose pointer names `old`
    moved_run = run_copy(moved)
    assert moved_run["system"] != first["system"]  # its own cluster, keyed by its new path
    assert not old.exists(), "the old cache folder was left behind"
    assert len(cached.cache_folders()) == 1
    assert leftovers(cached.tmpdir) == []


def test_the_cache_of_a_deleted_project_is_deleted_by_the_next_run_of_another(
    cached: CachedProject,
) -> None:
    cached.run()
    gone = cached.cache_folder()
    other = cached.path.parent / f"{cached.path.name}-other"
    # Another project: the same files without the pytest cache (and its pointer).
    shutil.copytree(cached.path, other, ignore=shutil.ignore_patterns(".pytest_cache"))

    first = run_copy(other)
    assert len(cached.cache_folders()) == 2  # each project its own, the first one's kept
    kept = next(folder for folder in cached.cache_folders() if folder != gone)
    shutil.rmtree(cached.path / ".pytest_cache")  # as if the project had been deleted
    second = run_copy(other)
    assert cached.cache_folders() == [kept], "the deleted project's cache was left behind"
    assert second["system"] == first["system"]  # the other project's cluster, reused
    assert leftovers(cached.tmpdir) == []


@pytest.mark.skipif(sys.platform == "win32", reason="the cache lock needs fcntl")
@pytest.mark.parametrize("meanwhile", ["deleted", "deleted and made anew"])
def test_a_lock_taken_on_a_folder_deleted_meanwhile_is_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, meanwhile: str
) -> None:
    # Another project's run deletes a forgotten cache folder (remove_forgotten) while this run
    # has opened its lock file but not yet locked it: the lock this run then gets is on a file
    # that is no longer the folder's, so the run must not count the folder as its own.
    folder = tmp_path / f"{FOLDER_PREFIX}0123456789abcdef"
    folder.mkdir()
    real_flock = _cache.fcntl.flock

    def flock_after_a_deletion(fd: int, operation: int) -> None:
        shutil.rmtree(folder)
        if meanwhile == "deleted and made anew":
            folder.mkdir()
            (folder / LOCK_FILE).touch()
        real_flock(fd, operation)

    monkeypatch.setattr(_cache.fcntl, "flock", flock_after_a_deletion)
    assert try_lock(folder) is None
    monkeypatch.setattr(_cache.fcntl, "flock", real_flock)
    folder.mkdir(exist_ok=True)
    lock = try_lock(folder)  # with nothing in between, the lock is taken
    assert lock is not None
    assert try_lock(folder) is None  # and held
    lock.release()
