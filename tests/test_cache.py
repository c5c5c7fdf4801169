"""The cluster and template cached between runs: reused when fit, rebuilt when not, bypassed on
request, never shared by two runs at once.

Each sub-session runs with pytest's cache provider on (the cache's pointer lives there) and in
a private TMPDIR (the cached cluster lives in the kit's base folder inside it). A test of the
sub-session records what the server was (``scaffolding.RECORDING_TESTS``): its system
identifier changes with every initdb, the template's oid with every rebuild of the template.
A test that does not test the cold run starts from a private copy of a cache built once per
process by one (``cached``; ``cold`` for the tests of that run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ITEMS_APP, Project, assert_nothing_left, postgres_processes_under
from scaffolding import (
    CACHED_INI,
    CachedProject,
    Damage,
    PrebuiltCaches,
    deal_in_process,
    deal_in_turn,
    identity,
    prebuilt_caches_fixture,  # noqa: F401 (a fixture)
)

from anyio_fastapi_testkit._core.config import FRESH_DB_ENV, read_settings
from anyio_fastapi_testkit._postgres import cache as _cache
from anyio_fastapi_testkit._postgres.cache import (
    CACHE_KEY,
    FOLDER_PREFIX,
    LOCK_FILE,
    MARKER_FILE,
    ClusterCache,
    stop_abandoned,
    try_lock,
)
from anyio_fastapi_testkit._postgres.cluster import Cluster
from anyio_fastapi_testkit._postgres.local_install import start_cached_ahead
from anyio_fastapi_testkit._postgres.orphans import cleanup_orphans
from anyio_fastapi_testkit._postgres.server import RunningServer, start_server
from anyio_fastapi_testkit._provisioning import owned as _owned
from anyio_fastapi_testkit._provisioning.fingerprint import schema_fingerprint
from anyio_fastapi_testkit._provisioning.template_check import check_cached_template


@pytest.fixture
def cold(project: Project, private_tmpdir: Path) -> CachedProject:
    """A project whose first run is its cold run: for the tests of that run."""
    return CachedProject(project, private_tmpdir)


@pytest.fixture
def cached(cold: CachedProject, prebuilt_caches: PrebuiltCaches) -> CachedProject:
    """A project given a copy of the cache its cold run made (built once per process), for
    the tests that do not test that cold run."""
    cold.start_from(prebuilt_caches.get(ITEMS_APP))
    return cold


# --- reuse ---------------------------------------------------------------------------------


def test_a_warm_run_reuses_the_cached_cluster_and_template(cold: CachedProject) -> None:
    first = cold.run()
    assert first["database"] == "test_app"
    assert first["template"] is not None
    marker = cold.marker()
    assert marker["template_key"]
    pointer = cold.path / ".pytest_cache" / "v" / CACHE_KEY
    assert json.loads(pointer.read_text())["folder"] == str(cold.folder())

    second = cold.run()

    assert second["system"] == first["system"], "initdb ran again"
    assert second["template"] == first["template"], "the template was rebuilt"
    assert second["data_directory"] == first["data_directory"]
    # The same, but what the check of the second run records of the template's files.
    files = ("template_oid", "template_files")
    assert {key: value for key, value in cold.marker().items() if key not in files} == {
        key: value for key, value in marker.items() if key not in files
    }
    # Between runs the server is stopped and only the template and a spare clone are kept.
    assert not (cold.data / "postmaster.pid").exists()


def test_a_warm_run_gets_its_database_from_the_spare_made_by_the_run_before(
    cached: CachedProject,
) -> None:
    # Each run records the spare it made in the background, once it is made (the cold run
    # whose cache this project has a copy of, too).
    first = cached.last_run()
    second = cached.run(WAIT_FOR_SPARE="1")
    assert second["working"] == first["spare"], "the warm run renamed the spare"
    assert second["spare"] != first["spare"]
    third = cached.run(WAIT_FOR_SPARE="1")
    assert third["working"] == second["spare"]
    kit_databases = sorted(name for name in third["databases"] if name.startswith("test_"))
    spares = [name for name in kit_databases if name.startswith("test_spare_")]
    assert kit_databases == sorted(["test_app", "test_app_template", *spares])
    assert len(spares) == 1


def test_with_testkit_database_env_the_clone_is_made_aside_and_no_spare_after_it(
    cached: CachedProject,
) -> None:
    # The database is then made before the conftest files are imported, its clone in a thread
    # while they are: a spare made during the tests would only take their CPU.
    first = cached.last_run()  # its cold run made a spare
    cached.project.pytester.makefile(
        ".ini", pytest=CACHED_INI + "testkit_database_env = DATABASE_URL\n"
    )
    second = cached.run(SPARE_WITHIN="2")
    assert second["working"] == first["spare"], "a spare made earlier is still claimed"
    assert second["spare"] is None, "the run made a spare"
    third = cached.run(SPARE_WITHIN="2")
    assert third["working"] not in (first["spare"], second["working"]), "not a new clone"
    assert third["template"] == first["template"]
    assert third["spare"] is None, "the run made a spare"
    kit_databases = sorted(name for name in third["databases"] if name.startswith("test_"))
    assert kit_databases == ["test_app", "test_app_template"]


def test_the_warm_run_drops_what_a_killed_run_left_and_restarts_its_server(
    cached: CachedProject,
) -> None:
    first = cached.last_run()  # as the cold run left the cache
    killed = cached.killed_run(KILL_PYTEST="1")
    assert killed["system"] == first["system"]
    left = cached.servers()

    after = cached.run()

    assert after["system"] == first["system"]  # recovered, not rebuilt
    assert after["template"] == first["template"]
    assert not any(process.is_running() for process in left if _alive(process))


def test_a_start_right_after_a_stop_that_did_not_wait_finds_the_cluster_shut_down_cleanly(
    cached: CachedProject,
) -> None:
    """The end of a run asks its cached server for a fast shutdown and returns at once (the
    server ends on its own); a start however soon after waits for that end, and finds the
    cluster shut down cleanly (no crash recovery), with its template."""
    first = cached.last_run()
    folder = cached.folder()

    def start() -> RunningServer:
        cache = ClusterCache(folder, rebuild=False, check_template=check_cached_template)
        return start_server(None, base_dir=folder.parent, cache=cache)

    lock = try_lock(folder)
    assert lock is not None, "the cache was left locked"
    try:
        ending = start()
        postmaster = psutil.Process(int((cached.data / "postmaster.pid").read_text().split()[0]))
        ending.stop(wait=False)
        again = start()
        log = (cached.cluster / "server.log").read_text()
        system, template = identity(again)  # and stops it, waiting
    finally:
        lock.release()

    assert not _alive(postmaster), "a second server started beside the one still ending"
    assert "not properly shut down" not in log, log
    assert "automatic recovery" not in log, log
    assert [str(row[0]) for row in system] == [first["system"]], "the cluster was made anew"
    assert [row[0] for row in template] == [first["template"]], "the template was rebuilt"


def test_a_template_whose_files_are_as_a_check_found_them_is_not_read_again(
    cached: CachedProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check of a reused cluster reads the template whole, unless its folder is as it was
    before the start of a run whose check found it whole, and the servers since ended cleanly:
    any change of a file of it (here only its time), or a crash, and it is read again."""
    folder = cached.folder()
    template = cached.marker()["template_name"]
    read: list[str] = []
    summary = _owned.database_summary

    def counted(url: Any, name: str) -> dict[str, Any]:
        read.append(name)
        return summary(url, name)

    monkeypatch.setattr(_owned, "database_summary", counted)

    def start() -> tuple[RunningServer, bool]:
        """A run's start on the cache: its server, and whether the check read the template."""
        read.clear()
        cache = ClusterCache(folder, rebuild=False, check_template=check_cached_template)
        server = start_server(None, base_dir=folder.parent, cache=cache)
        return server, template in read

    def run() -> bool:
        server, was_read = start()
        server.stop(wait=False)  # as a run ends
        return was_read

    lock = try_lock(folder)
    assert lock is not None, "the cache was left locked"
    try:
        assert run(), "the first check after the template was built did not read it"
        # The server's own work may still write the template's files for a run or two (its
        # first reads, autovacuum): a later run then finds them as the last check left them.
        assert False in [run() for _ in range(4)], "no run kept the template unread"

        oid = cached.marker()["template_oid"]
        some_file = next(path for path in (cached.data / "base" / str(oid)).iterdir())
        times = some_file.stat()
        os.utime(some_file, ns=(times.st_atime_ns, times.st_mtime_ns + 1_000_000))
        assert run(), "a file of the template changed, and the check did not read it"
        assert False in [run() for _ in range(3)], "no run kept the template unread again"

        server, _ = start()
        postmaster = int((cached.data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)  # a crash: its pid file is left behind
        while psutil.pid_exists(postmaster) and psutil.Process(postmaster).status() != "zombie":
            time.sleep(0.01)
        server.stop()
        again, was_read = start()
        assert was_read, "the server before this start crashed, and the check did not read it"
        system, rows = identity(again)  # and stops it, waiting
    finally:
        lock.release()

    assert [row[0] for row in rows] == [cached.last_run()["template"]], "the template was rebuilt"
    assert system


def test_the_cached_server_started_ahead_is_the_one_the_start_then_waits_for(
    cached: CachedProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With testkit_database_env the kit launches the cached cluster's server before it
    imports SQLAlchemy and psycopg (``start_cached_ahead``): the start proper then waits for
    that server instead of launching one, and what nothing takes is stopped."""
    first = cached.last_run()
    folder = cached.folder()
    launched: list[int] = []
    launch = Cluster.launch

    def counted(cluster: Cluster) -> None:
        launch(cluster)
        launched.append(cluster.port)

    monkeypatch.setattr(Cluster, "launch", counted)
    lock = try_lock(folder)
    assert lock is not None, "the cache was left locked"
    try:
        cache = ClusterCache(folder, rebuild=False, check_template=check_cached_template)
        start_cached_ahead(cache, tcp=True, base_dir=folder.parent)
        assert len(launched) == 1, "nothing was launched ahead"
        server = start_server(None, base_dir=folder.parent, cache=cache)
        assert launched == [server.info.admin_url.port], "the start launched another server"
        system, template = identity(server)  # and stops it, waiting

        cache = ClusterCache(folder, rebuild=False, check_template=check_cached_template)
        start_cached_ahead(cache, tcp=True, base_dir=folder.parent)
        assert len(launched) == 2
        servers = postgres_processes_under(folder)
        cache.abandon_ahead()  # a run that fails before it takes it
        assert not (cached.data / "postmaster.pid").exists()
        while any(_alive(process) for process in servers):
            time.sleep(0.01)
    finally:
        lock.release()

    assert [str(row[0]) for row in system] == [first["system"]], "the cluster was made anew"
    assert [row[0] for row in template] == [first["template"]], "the template was rebuilt"
    assert "not properly shut down" not in (cached.cluster / "server.log").read_text()


def test_a_run_that_fails_before_it_takes_the_server_started_ahead_stops_it(
    cached: CachedProject,
) -> None:
    pytester = cached.project.pytester
    pytester.makefile(".ini", pytest=CACHED_INI + "testkit_database_env = DATABASE_URL\n")
    # A failure between the start ahead and the start proper: the module that makes the
    # databases cannot be imported.
    pytester.makepyfile(
        no_provisioning="import sys\n"
        "sys.modules['anyio_fastapi_testkit._provisioning.run_databases'] = None\n"
    )
    result = cached.sub_session("-p", "no_provisioning")
    assert result.ret != 0
    assert "anyio_fastapi_testkit._provisioning.run_databases" in cached.output, cached.output
    assert_nothing_left(cached.tmpdir)  # no server of the cached cluster runs on


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- rebuilds ------------------------------------------------------------------------------


def test_a_schema_change_rebuilds_the_template_in_the_same_cluster(
    cached: CachedProject,
) -> None:
    first = cached.last_run()  # as the cold run left the cache
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


# Dealt in turn to one project (see scaffolding.deal_in_turn).
DAMAGE: dict[str, tuple[Damage, str]] = {
    # As left by a run killed while building the template.
    "no completion mark": (lambda c, r: c.edit_marker(template_key=None), "template only"),
    # As left by a run killed in initdb.
    "no marker": (lambda c, r: (c.folder() / MARKER_FILE).unlink(), "initdb"),
    "corrupt data": (
        lambda c, r: (c.data / "global" / "pg_control").write_bytes(b"garbage"),
        "initdb",
    ),
    "data folder gone": (lambda c, r: shutil.rmtree(c.cluster), "initdb"),
    "cache cleared": (lambda c, r: ("--cache-clear",), "initdb"),
}


# The damages whose repair a real run shows (``deal_in_turn``): a cluster made anew (a
# template built anew in the same cluster: test_a_schema_change_rebuilds_...). Each other
# damage's repair is decided in this process (``deal_in_process``): what a real run adds
# after the start does not depend on the damage, but on what the start left.
REAL_RUNS = ("cache cleared",)


def test_a_half_built_or_damaged_cache_is_rebuilt(cached: CachedProject) -> None:
    deal_in_process(cached, {name: DAMAGE[name] for name in DAMAGE if name not in REAL_RUNS})
    cached.start_from(cached.prebuilt)  # type: ignore[arg-type]
    deal_in_turn(cached, {name: DAMAGE[name] for name in REAL_RUNS})


# --- bypass and concurrency ------------------------------------------------------------------


def test_fresh_db_bypasses_the_cache(
    cached: CachedProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = cached.last_run()  # as the cold run left the cache
    marker = cached.marker()
    fresh = cached.run("--testkit-fresh-db", cached=False)
    assert fresh["system"] != first["system"]
    assert cached.marker() == marker, "the cache was touched"
    # The run reads the flag, the variable and the ini setting as one setting: each of them
    # sets it (decided in this process with the kit's own reading), and none of them, not.
    monkeypatch.delenv(FRESH_DB_ENV, raising=False)
    for how, args, env in [
        ("none", (), {}),
        ("flag", ("--testkit-fresh-db",), {}),
        ("env", (), {FRESH_DB_ENV: "1"}),
        ("ini", ("-o", "testkit_fresh_db=true"), {}),
    ]:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            config = cached.project.pytester.parseconfig(*args)
            assert read_settings(config).fresh_db == (how != "none"), how
    # None of this changed the cache in a way the marker does not show.
    cached.assert_reused_as_left(first)


# Holds the cache until the test lets it go (a run of its own; bounded by its caller).
WAITING_TEST = """
import time
from pathlib import Path

def test_hold_the_cache(database_url):
    Path("holding").write_text(str(database_url))
    while not Path("release").exists():
        time.sleep(0.05)
"""


def test_a_concurrent_run_uses_a_throwaway_cluster_and_leaves_the_cache_alone(
    cached: CachedProject,
) -> None:
    first = cached.last_run()  # as the cold run left the cache
    cached.project.module("test_waiting", WAITING_TEST)
    with cached.holder("test_waiting.py") as holder:
        while not (cached.path / "holding").exists():  # the holder has the cache now
            assert holder.poll() is None, holder.communicate()[0]
            time.sleep(0.05)
        try:
            second = cached.run("-k", "not hold_the_cache", cached=False, besides=cached.folders())
        finally:
            (cached.path / "release").write_text("")
        output = holder.communicate()[0]
    assert holder.returncode == 0, output
    assert second["system"] != first["system"]
    cached.assert_reused_as_left(first)


def test_without_the_cache_provider_nothing_is_cached(
    cold: CachedProject,
) -> None:
    cold.project.run()  # Project.run disables the cache provider in a private TMPDIR
    assert cold.folders() == []
    assert_nothing_left(cold.tmpdir)


# --- orphans and fingerprints ----------------------------------------------------------------


def test_orphan_cleanup_stops_an_abandoned_cached_server_and_keeps_its_cluster(
    cold: CachedProject,
) -> None:
    first = cold.killed_run(KILL_PYTEST="1")  # the run that made the cache
    folder = cold.folder()
    servers = cold.servers()
    base = folder.parent

    assert cleanup_orphans(base) == []  # removes no cache
    assert stop_abandoned(base) == [folder]

    # pg_ctl waited for the stop: the server's children have ended, and the postmaster
    # removes its pid file as it exits; wait for that exit (no deadline: nothing is slow here).
    assert not (cold.data / "postmaster.pid").exists()
    while any(_alive(process) for process in servers):
        time.sleep(0.01)
    assert postgres_processes_under(folder) == []
    assert (cold.data / "PG_VERSION").exists()
    cold.assert_reused_as_left(first)


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


def test_the_cache_of_a_moved_project_replaces_the_old_one(cached: CachedProject) -> None:
    first = cached.last_run()  # as the cold run left the cache
    old = cached.folder()
    moved = cached.path.parent / f"{cached.path.name}-moved"
    shutil.copytree(cached.path, moved)  # with its .pytest_cache, whose pointer names `old`
    moved_run = cached.run_elsewhere(moved)
    assert moved_run["system"] != first["system"]  # its own cluster, keyed by its new path
    assert not old.exists(), "the old cache folder was left behind"
    assert len(cached.folders()) == 1
    assert_nothing_left(cached.tmpdir)


def test_the_cache_of_a_deleted_project_is_deleted_by_the_next_run_of_another(
    cached: CachedProject,
) -> None:
    gone = cached.folder()  # as the cold run left it
    other = cached.path.parent / f"{cached.path.name}-other"
    # Another project: the same files without the pytest cache (and its pointer).
    shutil.copytree(cached.path, other, ignore=shutil.ignore_patterns(".pytest_cache"))

    first = cached.run_elsewhere(other)
    assert len(cached.folders()) == 2  # each project its own, the first one's kept
    kept = next(folder for folder in cached.folders() if folder != gone)
    shutil.rmtree(cached.path / ".pytest_cache")  # as if the project had been deleted
    second = cached.run_elsewhere(other)
    assert cached.folders() == [kept], "the deleted project's cache was left behind"
    assert second["system"] == first["system"]  # the other project's cluster, reused
    assert_nothing_left(cached.tmpdir)


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
