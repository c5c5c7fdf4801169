"""pytest-xdist: one server and one template for the whole run, a database per worker, all of it
dropped and stopped at the end; on the kit's own server, the cached one and a configured URL.

Each worker's tests record what they saw (the server's system identifier and data folder,
their database, the server processes running, the databases present) in a file per worker.

The runs that test neither the throwaway cluster nor what a killed run leaves use the cached
cluster the sub-sessions of this process share (``shared_tmpdir``): no initdb of their own.
"""

from __future__ import annotations

import json
import os
import re
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import (
    ITEMS_APP,
    SUBSESSION_TIMEOUT,
    Project,
    assert_nothing_left,
    database_names,
    drop_by_hand,
    leftovers,
    sql_rows,
)
from scaffolding import shared_tmpdir_fixture  # noqa: F401 (the shared_tmpdir fixture)
from sqlalchemy.engine import URL

from anyio_fastapi_testkit._postgres.cache import FOLDER_PREFIX
from anyio_fastapi_testkit._postgres.server import RunningServer

TESTS_PER_MODULE = 6

RECORDING_MODULE = """
import json
import os
import time
from pathlib import Path

import psycopg
import psutil
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from items_app import Item

TMPDIR = Path(os.environ["TMPDIR"])


def rows(url, statement):
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        return conn.execute(statement).fetchall()


def postmasters():
    # A postmaster's command line names its data folder; its children's do not, once they
    # have set their title: a backend caught just after its fork still shows the postmaster's
    # command line, so a process whose parent is one of those found is not counted.
    found = {}
    for process in psutil.process_iter(["name", "cmdline", "ppid"]):
        cmdline = process.info["cmdline"] or []
        if (process.info["name"] or "").startswith("postgres") and "-D" in cmdline:
            data = cmdline[cmdline.index("-D") + 1]
            if os.environ.get("TESTKIT_DATABASE_URL") or data.startswith(str(TMPDIR)):
                found[process.pid] = process.info["ppid"]
    return sorted(pid for pid, parent in found.items() if parent not in found)


def record(database_url):
    url = make_url(str(database_url)).set(drivername="postgresql")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "none")
    entry = {
        "worker": worker,
        "system": str(rows(url, "SELECT system_identifier FROM pg_control_system()")[0][0]),
        "data_directory": rows(url, "SHOW data_directory")[0][0],
        "database": rows(url, "SELECT current_database()")[0][0],
        "databases": [name for (name,) in rows(url, "SELECT datname FROM pg_database")],
        "postmasters": postmasters(),
        "env": os.environ.get("DATABASE_URL"),
    }
    with Path(f"seen-{worker}.jsonl").open("a") as handle:
        handle.write(json.dumps(entry) + "\\n")


"""

DB_TEST = """

async def test_db_{n}(db_session, database_url):
    assert await db_session.scalar(select(func.count(Item.id))) == 0
    db_session.add(Item(name="pen"))
    await db_session.flush()
    time.sleep(0.05)  # so that both workers are busy at the same time
    record(database_url)
"""

FAILING_TEST = """

def test_fails():
    assert False, "a failing test must not keep the run from cleaning up"
"""


def write_project(project: Project, *, failing: bool = False, **settings: str) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(testkit_app="items_app:app", testkit_schema="items_app:Base.metadata", **settings)
    for module in ("a", "b"):
        tests = "".join(DB_TEST.format(n=n) for n in range(TESTS_PER_MODULE))
        extra = FAILING_TEST if failing and module == "a" else ""
        project.module(f"test_{module}", RECORDING_MODULE + tests + extra)


def seen(project: Project) -> list[dict[str, Any]]:
    entries = []
    for path in sorted(project.pytester.path.glob("seen-*.jsonl")):
        entries += [json.loads(line) for line in path.read_text().splitlines()]
        path.unlink()
    return entries


def check_one_server(entries: list[dict[str, Any]], workers: set[str]) -> None:
    assert {entry["worker"] for entry in entries} == workers, "every worker ran tests"
    assert len({entry["system"] for entry in entries}) == 1, "one server for all workers"
    for entry in entries:
        assert entry["database"] == f"test_app_{entry['worker']}"
        assert len(entry["postmasters"]) == 1, entry["postmasters"]
        templates = [name for name in entry["databases"] if name.endswith("_template")]
        assert templates == ["test_app_template"], "one template, not one per worker"


@pytest.mark.parametrize("stop_early", [False, True], ids=["all-tests", "exitfirst"])
def test_a_failing_run_with_workers_still_stops_everything(
    project: Project, shared_tmpdir: Path, stop_early: bool
) -> None:
    write_project(project, failing=True)
    result = project.run("-n", "2", *(["-x"] if stop_early else []))
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1
    if not stop_early:
        assert outcomes.get("passed") == 2 * TESTS_PER_MODULE
        check_one_server(seen(project), {"gw0", "gw1"})
    assert_nothing_left(shared_tmpdir)


# Records, in the controller, which of the database stack's modules it loaded before it started
# the workers (pytest_sessionstart) and before its end (pytest_unconfigure, tryfirst: before
# the kit's, which stops the server).
CONTROLLER_CONFTEST = """
import sys
from pathlib import Path

import pytest

WATCHED = ("anyio_fastapi_testkit.fixtures", "sqlalchemy", "psycopg")


def _write(config, name):
    if not hasattr(config, "workerinput"):
        loaded = [module for module in WATCHED if module in sys.modules]
        Path(config.rootpath, name).write_text(",".join(loaded))


def pytest_sessionstart(session):
    _write(session.config, "controller-at-start.txt")


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    _write(config, "controller-at-end.txt")
"""


def test_the_controller_starts_the_workers_before_loading_the_database_stack(
    project: Project, private_tmpdir: Path
) -> None:
    # A throwaway cluster (no cache provider): the controller starts and stops it.
    write_project(project)
    project.module("conftest", CONTROLLER_CONFTEST)
    result = project.run("-n", "2", fresh=True)  # a new interpreter: what the run imports
    result.assert_outcomes(passed=2 * TESTS_PER_MODULE)
    check_one_server(seen(project), {"gw0", "gw1"})
    root = project.pytester.path
    assert (root / "controller-at-start.txt").read_text() == ""
    # Loaded while the workers ran, for dropping the run's databases and stopping the server.
    assert (root / "controller-at-end.txt").read_text() == "sqlalchemy,psycopg"
    assert_nothing_left(private_tmpdir)

    # What the controller does itself still has the kit's fixtures.
    listed = project.run("-n", "2", "--fixtures")
    assert listed.ret == 0
    listed.stdout.fnmatch_lines(["client -- *", "db_session -- *"])
    collected = project.run("-n", "2", "--collect-only", "-q")
    collected.stdout.fnmatch_lines([f"{2 * TESTS_PER_MODULE} tests collected*"])
    assert_nothing_left(private_tmpdir)


def test_the_controller_loads_the_database_stack_off_its_main_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SIGINT or SIGTERM lands in the main thread: one that landed inside this import left
    frames without a line number in the interrupt, and pytest's report of it failed."""
    from anyio_fastapi_testkit._provisioning import xdist as _xdist

    loaded: list[tuple[str, str]] = []

    def import_module(name: str) -> None:
        loaded.append((name, threading.current_thread().name))

    monkeypatch.setattr(_xdist, "importlib", types.SimpleNamespace(import_module=import_module))
    unregistered: list[object] = []
    manager = types.SimpleNamespace(unregister=lambda plugin, name: unregistered.append(plugin))
    loader = _xdist._LoadForFinish(types.SimpleNamespace(pluginmanager=manager))  # type: ignore[arg-type]

    loader.pytest_runtest_logreport()
    for thread in threading.enumerate():
        if thread.name == "testkit-load-for-finish":
            thread.join()

    assert unregistered == [loader]  # once, at the first report
    assert sorted(loaded) == [
        ("anyio_fastapi_testkit._provisioning.owned", "testkit-load-for-finish"),
        ("sqlalchemy.engine", "testkit-load-for-finish"),
    ]


def test_two_workers_share_one_server_and_template(project: Project, shared_tmpdir: Path) -> None:
    # On the cached cluster, twice: the workers of both runs use the one cluster, each
    # worker's own database also in the environment (testkit_database_env).
    write_project(project, testkit_database_env="DATABASE_URL")
    base = shared_tmpdir / f"anyio-fastapi-testkit-{os.getuid()}"
    systems = []
    for round_ in ("first", "second"):
        result = project.run("-n", "2")
        result.assert_outcomes(passed=2 * TESTS_PER_MODULE)
        entries = seen(project)
        check_one_server(entries, {"gw0", "gw1"})
        caches = list(base.glob(f"{FOLDER_PREFIX}*"))
        for entry in entries:
            assert entry["env"].endswith(f"/{entry['database']}")
            data = Path(entry["data_directory"])
            assert any(data.is_relative_to(folder) for folder in caches), (
                f"the {round_} run's workers did not use the cached cluster: {data}"
            )
        systems.append(entries[0]["system"])
        assert_nothing_left(shared_tmpdir)
    assert systems[0] == systems[1], "the second run did not reuse the cluster the first left"


@pytest.fixture
def appdb(pg_server: RunningServer) -> Iterator[URL]:
    admin = pg_server.info.admin_url
    drop_by_hand(admin, "xdistdb")
    sql_rows(admin, "CREATE DATABASE xdistdb")
    yield admin.set(database="xdistdb")
    for name in database_names(admin):
        if "xdistdb" in name:
            drop_by_hand(admin, name)


def test_two_workers_on_a_configured_server(
    project: Project, private_tmpdir: Path, appdb: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(project)
    monkeypatch.setenv("TESTKIT_DATABASE_URL", appdb.render_as_string(hide_password=False))
    result = project.run("-n", "2")
    result.assert_outcomes(passed=2 * TESTS_PER_MODULE)
    entries = seen(project)
    assert {entry["worker"] for entry in entries} == {"gw0", "gw1"}
    # Names carry the run's token: other runs may share a configured server.
    tokens = {entry["database"].split("_")[2] for entry in entries}
    assert len(tokens) == 1, tokens
    token = tokens.pop()
    assert re.fullmatch("[0-9a-f]{8}", token), token
    for entry in entries:
        assert entry["database"] == f"test_xdistdb_{token}_{entry['worker']}"
        templates = [name for name in entry["databases"] if name.endswith("_template")]
        assert templates == [f"test_xdistdb_{token}_template"]
    assert [name for name in database_names(appdb) if name.startswith("test_")] == []
    assert "xdistdb" in database_names(appdb)  # the configured database itself is left alone
    assert_nothing_left(private_tmpdir)


KILLING_TEST = """
import os
import signal


def test_kill_the_controller(database_url):
    os.kill(os.getppid(), signal.SIGKILL)  # the xdist controller: its unconfigure never runs
"""


def test_a_killed_controller_leaves_orphans_that_the_next_run_removes(
    project: Project, private_tmpdir: Path
) -> None:
    write_project(project)
    project.module("test_kill", KILLING_TEST)
    killed = project.run("-n", "2", "-k", "kill")
    assert killed.ret not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    # The workers work in the project's folder, as this process does (pytester's chdir): the
    # bound only keeps a worker that does not exit from hanging the test.
    workers = [
        process
        for process in psutil.process_iter(["cwd"])
        if process.info["cwd"] == str(project.pytester.path) and process.pid != os.getpid()
    ]
    assert workers, "no xdist worker of the killed run was found"
    _gone, alive = psutil.wait_procs(workers, timeout=SUBSESSION_TIMEOUT)
    assert alive == [], "the workers exit once their controller is gone"
    left = leftovers(private_tmpdir)
    assert any(item.startswith("run-xdist-") for item in left), left
    assert any(item.startswith("pid ") for item in left), "the workers' server still runs"

    # -n 0 runs as without xdist: one process, the database without a worker's suffix. (The
    # recorder reads PYTEST_XDIST_WORKER, which this process has when the suite runs with -n.)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("PYTEST_XDIST_WORKER", raising=False)
        env.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
        result = project.run("-n", "0", "-k", "not kill")
    result.assert_outcomes(passed=2 * TESTS_PER_MODULE)
    entries = seen(project)
    assert {entry["worker"] for entry in entries} == {"none"}
    assert {entry["database"] for entry in entries} == {"test_app"}
    assert all(len(entry["postmasters"]) == 1 for entry in entries), entries
    assert_nothing_left(private_tmpdir)
