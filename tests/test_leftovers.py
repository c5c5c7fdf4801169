"""Nothing stray after a kill, nothing accumulating over runs (issue 21, items 4 and 9).

Real pytest runs are killed (SIGKILL, as an OOM killer or a cancelled CI job does) at the
moment that matters, and the next run must pass and leave nothing: no child process of the
kit's, no server, no database the dead run made, no socket folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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
    postgres_processes_under,
    sql_rows,
)
from scaffolding import (
    items_revision,
    run_with_cache,
    shared_tmpdir_fixture,  # noqa: F401 (the shared_tmpdir fixture)
    write_alembic,
)
from sqlalchemy.engine import URL

from anyio_fastapi_testkit._postgres.server import RunningServer
from anyio_fastapi_testkit._postgres.state_folder import (
    SOCKET_DIR_GRACE_SECONDS,
    remove_dead_socket_dirs,
)
from anyio_fastapi_testkit._provisioning.databases import PENDING_PREFIX
from anyio_fastapi_testkit._provisioning.spares import spare_name

# --- item 4: the kit's children die with the run ---------------------------------------------

# With SLOW_MIGRATION set, the migration says which process runs it, then takes its time:
# long enough that a child left running by the killed run is still there when looked for.
SLOW_REVISION = items_revision(
    """\
    import os
    import time
    from pathlib import Path

    if os.environ.get("SLOW_MIGRATION"):
        Path("migrating.pid").write_text(str(os.getpid()))
        time.sleep(600)
"""
)

MIGRATED_TEST = """
from sqlalchemy import text


async def test_migrated(db_session):
    assert (await db_session.execute(text("SELECT count(*) FROM items"))).scalar() == 0
"""


def alembic_project(project: Project) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(testkit_app="items_app:app", testkit_schema="alembic:alembic.ini")
    write_alembic(project.pytester.path, {"0001_items.py": SLOW_REVISION})
    project.module("test_migrated", MIGRATED_TEST)


# The runs started in the background (new interpreters, to be killed) load only the plugins
# they need (autoload off: PYTEST_ENV).
BACKGROUND_PLUGINS = ("-p", "anyio_fastapi_testkit.plugin", "-p", "xdist")
PYTEST_ENV = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def pytest_command(*args: str, cache: bool = False) -> list[str]:
    no_cache = () if cache else ("-p", "no:cacheprovider")
    return [
        sys.executable,
        "-m",
        "pytest",
        *no_cache,
        "-p",
        "no:randomly",
        *BACKGROUND_PLUGINS,
        *args,
    ]


def start(project: Project, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """A pytest run in the project's folder, its output in ``run.log`` there."""
    with (project.pytester.path / "run.log").open("wb") as log:
        return subprocess.Popen(
            pytest_command(*args),
            cwd=project.pytester.path,
            env={**os.environ, **PYTEST_ENV, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_for_file(project: Project, name: str, run: subprocess.Popen[bytes]) -> Path:
    path = project.pytester.path / name
    deadline = time.monotonic() + SUBSESSION_TIMEOUT
    while not path.exists() or not path.read_text():
        log = (project.pytester.path / "run.log").read_text(errors="replace")
        assert run.poll() is None, f"the run ended before {name}:\n{log}"
        assert time.monotonic() < deadline, f"no {name}:\n{log}"
        time.sleep(0.05)
    return path


def running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE  # a zombie has ended
    except psutil.NoSuchProcess:
        return False


def ends(process: psutil.Process) -> bool:
    """Whether ``process`` ends: a zombie counts as ended (its new parent may never reap it,
    so this polls its state). The bound, a sub-session's, only keeps a survivor from hanging
    the test: a process that is to end ends at once (the kernel signalled it)."""
    deadline = time.monotonic() + SUBSESSION_TIMEOUT
    while running(process):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def ended_at_exit(*processes: psutil.Process) -> Iterator[None]:
    """Whatever the test finds, the processes it knows of do not outlive it."""
    try:
        yield
    finally:
        for process in processes:
            with contextlib.suppress(psutil.Error):
                if running(process):
                    process.kill()


def test_the_alembic_subprocess_dies_with_a_killed_run_and_the_next_run_passes(
    project: Project, private_tmpdir: Path
) -> None:
    alembic_project(project)
    run = start(project, "-q", SLOW_MIGRATION="1")
    try:
        marker = wait_for_file(project, "migrating.pid", run)
        child = psutil.Process(int(marker.read_text()))
        assert child.pid in {p.pid for p in psutil.Process(run.pid).children(recursive=True)}
        servers = postgres_processes_under(private_tmpdir)
        assert servers, "the killed run had no server running"
    finally:
        run.kill()  # SIGKILL: the run can clean up nothing itself
        run.wait()

    with ended_at_exit(child, *servers):
        assert ends(child), f"the Alembic subprocess (pid {child.pid}) outlived the killed run"
        assert any(running(server) for server in servers), "a server left by the killed run"
        marker.unlink()

        project.run().assert_outcomes(passed=1)

        assert not any(running(server) for server in servers), "the next run stopped it"
        assert not marker.exists(), "the next run's migration was not slowed"
        assert_nothing_left(private_tmpdir)


# --- item 9 (d): the leak check's own connection is replaced after a fault -----------------

# Sync tests: the leak check counts on its own connection. The first test ends that
# connection's backend (the one that ran the counting query); the check at its end, and every
# later one, must count on a new connection, and still find a real leak.
LEAK_CONNECTION_TESTS = """
import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url


def test_1_ends_the_leak_checks_connection(db_session_sync):
    ended = db_session_sync.execute(text(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND query LIKE '%::text, count(*) FROM%'"
    )).scalars().all()
    assert ended == [True]


def test_2_unrelated(db_session_sync):
    assert db_session_sync.execute(text("SELECT count(*) FROM items")).scalar() == 0


def test_3_commits_for_real(db_session_sync, database_url):
    url = make_url(str(database_url)).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute("INSERT INTO items (name) VALUES ('leaked')")


def test_4_unrelated(db_session_sync):
    db_session_sync.execute(text("SELECT 1"))
"""


def test_the_leak_checks_connection_is_replaced_after_a_fault(
    project: Project, shared_tmpdir: Path
) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(testkit_app="items_app:app", testkit_schema="items_app:Base.metadata")
    project.module("test_leak_connection", LEAK_CONNECTION_TESTS)

    result = project.run("-p", "no:randomly", "-rA")  # on the shared cached cluster

    # Test 3's leak is still found, by the new connection; nothing else fails.
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_3_commits_for_real*",
            "*Data was committed to the test database*public.items (0 -> 1 rows)*",
        ]
    )
    assert_nothing_left(shared_tmpdir)


# --- item 9 (b): short socket folders of dead runs are removed -------------------------------

KILLED_WITH_THE_CACHE = """
import os
import signal


def test_maybe_killed(database_url):
    if os.environ.get("KILL_PYTEST"):
        os.kill(os.getpid(), signal.SIGKILL)  # its cached server stays, with its socket folder
"""


@pytest.fixture
def long_tmpdir(private_tmpdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TMPDIR too long for a socket path: the kit's servers get ``/tmp/testkit-sock-*``."""
    folder = private_tmpdir / ("long" * 12)
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


def cached_socket_dir(tmpdir: Path) -> Path:
    """The socket folder the cached cluster's owner.json names."""
    base = tmpdir / f"anyio-fastapi-testkit-{os.getuid()}"
    (cluster,) = base.glob("cache-*/cluster")
    return Path(json.loads((cluster / "owner.json").read_text())["socket_dir"])


def test_the_socket_folder_of_a_killed_cached_run_is_removed_by_the_next(
    project: Project, long_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(testkit_app="items_app:app", testkit_schema="items_app:Base.metadata")
    project.module("test_maybe_killed", KILLED_WITH_THE_CACHE)
    monkeypatch.setenv("KILL_PYTEST", "1")
    killed = run_with_cache(project.pytester)  # pytest's cache provider on: the cached cluster
    assert killed.ret == -signal.SIGKILL
    left = cached_socket_dir(long_tmpdir)
    try:
        assert left.name.startswith("testkit-sock-") and left.is_dir()
        monkeypatch.delenv("KILL_PYTEST")

        run_with_cache(project.pytester).assert_outcomes(passed=1)

        assert not left.exists(), "the killed run's socket folder is still there"
        last = cached_socket_dir(long_tmpdir)
        assert last != left and not last.exists(), "the run removed its own at the stop"
        assert_nothing_left(long_tmpdir)
    finally:
        shutil.rmtree(left, ignore_errors=True)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_sweep_removes_only_socket_folders_no_server_uses() -> None:
    made: dict[str, Path] = {}

    def socket_dir(label: str, files: dict[str, str], age: float) -> None:
        folder = Path(tempfile.mkdtemp(prefix="testkit-sock-", dir="/tmp"))
        for name, text in files.items():
            (folder / name).write_text(text)
        then = time.time() - age
        os.utime(folder, (then, then))
        made[label] = folder

    old = SOCKET_DIR_GRACE_SECONDS + 60
    lock = ".s.PGSQL.5432.lock"
    try:
        socket_dir("empty", {}, old)  # killed before its server started
        socket_dir("killed server", {".s.PGSQL.5432": "", lock: f"{dead_pid()}\n/d\n"}, old)
        socket_dir("live server", {".s.PGSQL.5432": "", lock: f"{os.getpid()}\n/d\n"}, old)
        socket_dir("just made", {}, 1)  # a run about to start its server
        socket_dir("not a socket folder", {"notes.txt": "keep me"}, old)

        remove_dead_socket_dirs()

        gone = sorted(label for label, folder in made.items() if not folder.exists())
        assert gone == ["empty", "killed server"]
    finally:
        for folder in made.values():
            shutil.rmtree(folder, ignore_errors=True)


# --- item 9 (a): the databases of a killed run with more xdist workers are reclaimed ----------

# Each worker says when its database (and, in the cached cluster, its spare) is made, then
# waits to be killed.
HELD_BY_EACH_WORKER = """
import json
import os
import time
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from anyio_fastapi_testkit._provisioning.spares import spare_name


def names(url):
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        return sorted(name for (name,) in conn.execute("SELECT datname FROM pg_database"))


def wait_for_spare(url, working):
    spare = spare_name("test_app_template", working)
    deadline = time.monotonic() + 60
    while os.environ.get("WAIT_FOR_SPARE") and spare not in names(url):
        assert time.monotonic() < deadline, f"no spare {spare}"
        time.sleep(0.05)


def hold(database_url):
    url = make_url(str(database_url)).set(drivername="postgresql")
    wait_for_spare(url, url.database)
    worker = os.environ["PYTEST_XDIST_WORKER"]
    seen = {"database": url.database, "databases": names(url)}
    # Whole or not at all: the test reads it as soon as it is there, then kills the run.
    Path(f"ready-{worker}.json.part").write_text(json.dumps(seen))
    os.replace(f"ready-{worker}.json.part", f"ready-{worker}.json")
    deadline = time.monotonic() + 120
    while not Path("never").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a(database_url):
    hold(database_url)


def test_b(database_url):
    hold(database_url)


def test_c(database_url):
    hold(database_url)
"""

# The later run's test: what the server holds once this worker's own spare is made.
SEEN_BY_THE_NEXT_RUN = """
import json
import os
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from test_held import names, wait_for_spare


def test_seen(database_url):
    url = make_url(str(database_url)).set(drivername="postgresql")
    # Every worker's spare, not only this one's: another worker still making its own would
    # show a database under a pending name, which is this run's, not a leftover.
    for n in range(int(os.environ["PYTEST_XDIST_WORKER_COUNT"])):
        wait_for_spare(url, f"test_app_gw{n}")
    worker = os.environ["PYTEST_XDIST_WORKER"]
    Path(f"seen-{worker}.json").write_text(json.dumps(names(url)))


def test_seen_too(database_url):
    test_seen(database_url)
"""


def kill_the_run_once_every_worker_holds_its_database(
    project: Project, workers: int, *, cached: bool, **env: str
) -> list[str]:
    """Start a run with ``workers`` xdist workers, SIGKILL it (controller and workers) when
    each holds its database; the databases they held."""
    run = subprocess.Popen(
        pytest_command("-n", str(workers), "test_held.py", cache=cached),
        cwd=project.pytester.path,
        env={**os.environ, **PYTEST_ENV, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # one process group: controller and workers are killed
    )
    try:
        deadline = time.monotonic() + SUBSESSION_TIMEOUT
        while len(ready := sorted(project.pytester.path.glob("ready-gw*.json"))) < workers:
            assert run.poll() is None, "the run ended before every worker was ready"
            assert time.monotonic() < deadline, f"only {ready} were ready"
            time.sleep(0.05)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    return [json.loads(path.read_text())["database"] for path in ready]


def seen_by_the_next_run(project: Project) -> list[str]:
    """The databases on the server during the next run's tests (both its workers)."""
    seen: set[str] = set()
    for path in project.pytester.path.glob("seen-gw*.json"):
        seen |= set(json.loads(path.read_text()))
    return sorted(seen)


def xdist_project(project: Project) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(testkit_app="items_app:app", testkit_schema="items_app:Base.metadata")
    project.module("test_held", HELD_BY_EACH_WORKER)
    project.module("test_seen", SEEN_BY_THE_NEXT_RUN)


def test_a_killed_run_with_more_workers_leaves_nothing_in_the_cached_cluster(
    project: Project, private_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xdist_project(project)
    monkeypatch.setenv("WAIT_FOR_SPARE", "1")
    # Two workers, then one: as three then two (the fewest processes that show it).
    held = kill_the_run_once_every_worker_holds_its_database(project, 2, cached=True)
    assert sorted(held) == ["test_app_gw0", "test_app_gw1"]

    run_with_cache(project.pytester, "-n", "1", "test_seen.py").assert_outcomes(passed=2)

    seen = seen_by_the_next_run(project)
    spares = [spare_name("test_app_template", f"test_app_gw{n}") for n in range(2)]
    assert "test_app_gw1" not in seen
    assert spares[1] not in seen, "the spare of a worker the run does not have was kept"
    kit = [name for name in seen if name.startswith(("test_", PENDING_PREFIX))]
    expected = ["test_app_template", "test_app_gw0", spares[0]]
    assert kit == sorted(expected)
    assert_nothing_left(private_tmpdir)


@pytest.fixture
def configured(pg_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[URL]:
    """A configured server's URL (database ``leftdb``); what the tests make is dropped."""
    admin = pg_server.info.admin_url
    before = set(database_names(admin))
    sql_rows(admin, "CREATE DATABASE leftdb")
    url = admin.set(database="leftdb")
    monkeypatch.setenv("TESTKIT_DATABASE_URL", url.render_as_string(hide_password=False))
    yield url
    for name in set(database_names(admin)) - before:
        drop_by_hand(admin, name)


def test_a_killed_run_with_more_workers_leaves_nothing_on_a_configured_server(
    project: Project, private_tmpdir: Path, configured: URL
) -> None:
    xdist_project(project)
    held = kill_the_run_once_every_worker_holds_its_database(project, 2, cached=False)
    assert len(held) == 2 and all(name in database_names(configured) for name in held)
    assert any(name.endswith("_gw1") for name in held)

    project.run("-n", "1", "test_seen.py").assert_outcomes(passed=2)

    seen = seen_by_the_next_run(project)
    assert not set(held) & set(seen), "the killed run's databases were not dropped"
    kit = ("test_leftdb", PENDING_PREFIX)
    left = [name for name in database_names(configured) if name.startswith(kit)]
    assert left == [], "the next run left databases"
    assert_nothing_left(private_tmpdir)


# --- item 9 (c): a spare is never left half-made or mis-marked by a kill ----------------------

RECORD_THE_CACHED_DATABASES = """
import json
import time
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from anyio_fastapi_testkit._provisioning.spares import spare_name


def test_record(database_url):
    url = make_url(str(database_url)).set(drivername="postgresql")
    spare = spare_name("test_app_template", url.database)
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:

        def databases():
            rows = conn.execute(
                "SELECT datname, oid, shobj_description(oid, 'pg_database') FROM pg_database"
            ).fetchall()
            return {name: [oid, comment] for name, oid, comment in rows}

        deadline = time.monotonic() + 60
        while spare not in databases():  # this run's spare, made while the tests run
            assert time.monotonic() < deadline, "no spare"
            time.sleep(0.05)
        found = databases()
    record = {"working": found[url.database][0], "spare": found[spare][0], "databases": found}
    with Path("runs.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\\n")
"""

# Loaded with -p: the run dies between the spare's CREATE DATABASE and the COMMENT that marks it.
KILL_WHILE_THE_SPARE_IS_MADE = """
import os
import signal

from anyio_fastapi_testkit._provisioning import databases as _databases

_mark = _databases._mark


def _killed(conn, name, comment, *, shown):
    if "; run spare " in comment:
        os.kill(os.getpid(), signal.SIGKILL)
    return _mark(conn, name, comment, shown=shown)


_databases._mark = _killed
"""

# Loaded with -p: the run dies as it claims the spare, once it has renamed it, before it marks
# it as its own.
KILL_WHILE_THE_SPARE_IS_CLAIMED = """
import os
import signal

from psycopg import sql

from anyio_fastapi_testkit._provisioning import spares as _spares

_connect_admin = _spares.connect_admin


class _Dying:
    def __init__(self, conn):
        self._conn = conn

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def __enter__(self):
        self._conn.__enter__()
        return self

    def __exit__(self, *exc):
        return self._conn.__exit__(*exc)

    def execute(self, statement, *args):
        text = statement
        if isinstance(statement, sql.Composable):
            text = statement.as_string(self._conn)
        if text.startswith("COMMENT ON DATABASE"):
            os.kill(os.getpid(), signal.SIGKILL)
        return self._conn.execute(statement, *args)


_spares.connect_admin = lambda *args, **kwargs: _Dying(_connect_admin(*args, **kwargs))
"""


def cached_run(project: Project, *args: str) -> pytest.RunResult:
    return run_with_cache(project.pytester, *args)


def last_record(project: Project) -> dict[str, Any]:
    lines = (project.pytester.path / "runs.jsonl").read_text().splitlines()
    record: dict[str, Any] = json.loads(lines[-1])
    return record


def kit_databases(record: dict[str, Any]) -> list[str]:
    return sorted(name for name in record["databases"] if name.startswith("test_"))


def test_a_run_killed_while_making_or_claiming_its_spare_leaves_it_fit_for_the_next(
    project: Project, private_tmpdir: Path
) -> None:
    # One project, one cluster: first a run killed while it makes its spare (the first run:
    # it builds the cache, then makes the spare while its test runs), then one killed while
    # it claims the spare the run after the first kill made.
    project.module("items_app", ITEMS_APP)
    project.ini(testkit_app="items_app:app", testkit_schema="items_app:Base.metadata")
    project.module("test_record", RECORD_THE_CACHED_DATABASES)
    project.module("kill_while_the_spare_is_made", KILL_WHILE_THE_SPARE_IS_MADE)
    project.module("kill_while_the_spare_is_claimed", KILL_WHILE_THE_SPARE_IS_CLAIMED)
    spare = spare_name("test_app_template", "test_app")
    try:
        killed = cached_run(project, "-p", "kill_while_the_spare_is_made")
        assert killed.ret == -signal.SIGKILL

        cached_run(project).assert_outcomes(passed=1)

        first = last_record(project)
        assert kit_databases(first) == sorted(["test_app", "test_app_template", spare])
        assert [name for name in first["databases"] if name.startswith(PENDING_PREFIX)] == []
        assert all(comment for oid, comment in first["databases"].values() if oid > 16384)
        assert_nothing_left(private_tmpdir)
    except BaseException as error:
        error.add_note("killed while making its spare")
        raise

    try:
        killed = cached_run(project, "-p", "kill_while_the_spare_is_claimed")
        assert killed.ret == -signal.SIGKILL

        cached_run(project).assert_outcomes(passed=1)

        after = last_record(project)
        assert after["working"] == first["spare"], "the spare the killed run claimed was lost"
        assert kit_databases(after) == sorted(["test_app", "test_app_template", spare])
        assert_nothing_left(private_tmpdir)
    except BaseException as error:
        error.add_note("killed while claiming its spare")
        raise
