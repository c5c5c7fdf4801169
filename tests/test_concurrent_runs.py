"""Runs that share one configured server: each names its databases with its own token, holds an
advisory lock while it uses them, and at start drops what killed runs left (their locks are
free), never a live run's databases nor a database without the kit's mark.

The module's embedded server (``pg_server``) stands in for a team's shared server; the
configured URL names the database ``concdb`` on it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ITEMS_APP,
    SUBSESSION_TIMEOUT,
    Project,
    assert_nothing_left,
    database_names,
    drop_by_hand,
    sql_rows,
)
from psycopg import sql
from scaffolding import run_with_cache
from sqlalchemy.engine import URL

from anyio_fastapi_testkit._postgres.server import RunningServer
from anyio_fastapi_testkit._provisioning.databases import (
    MAX_NAME_BYTES,
    PENDING_PREFIX,
    create_database,
    ownership_comment,
    pending_name,
    test_database_names,
)
from anyio_fastapi_testkit._provisioning.liveness import RunLock, run_token
from anyio_fastapi_testkit._provisioning.owned import drop_dead_runs

BASE = "concdb"
FOREIGN = (BASE, f"test_{BASE}", f"test_{BASE}_0badf00d", f"test_{BASE}_0badf00d_template")


def comment_of(url: URL, name: str) -> Any:
    statement = sql.SQL(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = {}"
    ).format(name)
    rows = sql_rows(url, statement)
    return rows[0][0] if rows else None


def create_by_hand(url: URL, name: str, comment: str | None = None) -> None:
    """A database made without the kit (a team's own; or, with a comment, a kit's leftover)."""
    sql_rows(url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    sql_rows(url, "CREATE TABLE precious (note text)", name)
    sql_rows(url, "INSERT INTO precious VALUES ('keep me')", name)
    if comment is not None:
        statement = sql.SQL("COMMENT ON DATABASE {} IS {}")
        sql_rows(url, statement.format(sql.Identifier(name), sql.Literal(comment)))


def intact(url: URL, name: str) -> bool:
    return name in database_names(url) and sql_rows(url, "SELECT note FROM precious", name) == [
        ("keep me",)
    ]


def kit_names(url: URL) -> list[str]:
    """The databases a run on ``concdb`` makes (or leaves): ``test_concdb_<token>...`` and
    the pending ones (without the foreign databases the tests make by hand)."""
    return [
        name
        for name in database_names(url)
        if (name.startswith(f"test_{BASE}_") or name.startswith(PENDING_PREFIX))
        and name not in FOREIGN
    ]


@pytest.fixture
def shared(pg_server: RunningServer) -> Iterator[URL]:
    """The configured URL (database ``concdb``); everything made on the server is dropped."""
    admin = pg_server.info.admin_url
    before = set(database_names(admin))
    sql_rows(admin, f"CREATE DATABASE {BASE}")
    yield admin.set(database=BASE)
    for name in set(database_names(admin)) - before:
        drop_by_hand(admin, name)


# --- names, marks and the sweep, in this process ----------------------------------------------


@pytest.mark.parametrize("worker", [None, "gw0", "gw17"])
@pytest.mark.parametrize("base", ["appdb", "ü" * 40 + "long"])
def test_a_runs_names_end_with_its_token_and_fit(base: str, worker: str | None) -> None:
    token = run_token("4242-0123abcd")
    template, working = test_database_names(base, worker, token)
    other = test_database_names(base, worker, run_token("4242-0123abce"))
    assert {template, working}.isdisjoint(other), "two runs share no name"
    for name in (template, working):
        assert len(name.encode()) <= MAX_NAME_BYTES
        name.encode().decode()  # not cut inside a character
    base_name = template.removesuffix("_template")
    assert base_name.endswith(f"_{token}")
    assert working == (f"{base_name}_{worker}" if worker else base_name)
    assert test_database_names(base, worker) != (template, working)  # the kit's own server


def test_a_database_is_made_marked_under_its_final_name(shared: URL) -> None:
    create_database(shared, "test_made", run_id="run-a", locked=True)
    assert comment_of(shared, "test_made") == ownership_comment("run-a", locked=True)
    assert "advisory lock (1953196404, " in comment_of(shared, "test_made")
    assert [name for name in database_names(shared) if name.startswith(PENDING_PREFIX)] == []


def test_the_sweep_drops_only_what_dead_runs_left(shared: URL) -> None:
    dead, live = "111-deadbeef", "222-a11ve000"
    # The live run's lock is held on a connection to another database than the sweep's:
    # advisory locks belong to a database, and pg_locks lists them all.
    lock = RunLock(shared.set(database="postgres"), live)
    try:
        create_by_hand(shared, "test_dead_db", ownership_comment(dead, locked=True))
        create_by_hand(shared, "test_live_db", ownership_comment(live, locked=True))
        create_by_hand(shared, "test_old_db", ownership_comment("333-01d00000"))  # no lock
        dead_pending, live_pending = pending_name(dead), pending_name(live)
        create_by_hand(shared, dead_pending)  # killed between CREATE and COMMENT
        create_by_hand(shared, live_pending)  # being made right now
        for name in FOREIGN[1:]:
            create_by_hand(shared, name)

        dropped, failed = drop_dead_runs(shared)

        assert sorted(dropped) == sorted(["test_dead_db", dead_pending])
        assert failed == {}
        for name in ("test_live_db", live_pending, "test_old_db", *FOREIGN[1:]):
            assert intact(shared, name), name
    finally:
        lock.release()
    dropped, failed = drop_dead_runs(shared)
    assert sorted(dropped) == sorted(["test_live_db", live_pending]), (
        "once its lock is released, a run's leftovers are dropped"
    )
    assert failed == {}


# --- runs in sub-sessions -----------------------------------------------------------------------

# A's test holds its databases while B runs: it records them, then waits for B to finish.
HOLDING_TESTS = """
import json
import os
import time
from pathlib import Path

import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from items_app import Item


def names(url):
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        return [name for (name,) in conn.execute("SELECT datname FROM pg_database")]


def wait_for(path):
    deadline = time.monotonic() + 90
    while not Path(path).exists():
        assert time.monotonic() < deadline, f"{path} never came"
        time.sleep(0.05)


async def hold(db_session, database_url, label):
    url = make_url(str(database_url)).set(drivername="postgresql")
    db_session.add(Item(name=label))
    await db_session.flush()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "none")
    seen = {"database": url.database, "databases": names(url)}
    ready = Path(f"a-ready-{worker}-{label}.json")
    Path(f"{ready}.tmp").write_text(json.dumps(seen))
    os.replace(f"{ready}.tmp", ready)  # whole: the outer test reads it as soon as it is there
    wait_for("b-done")
    # B came and went: A's databases, its connection and its rows are all still there.
    assert await db_session.scalar(select(func.count(Item.id))) == 1
    assert url.database in names(url)


async def test_hold_one(db_session, database_url):
    await hold(db_session, database_url, "one")


async def test_hold_two(db_session, database_url):
    await hold(db_session, database_url, "two")
"""

# B's test runs while A holds its databases, and checks they are all there.
OTHER_RUN_TESTS = """
import json
from pathlib import Path

import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from items_app import Item


async def test_b(db_session, database_url):
    url = make_url(str(database_url)).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        present = [name for (name,) in conn.execute("SELECT datname FROM pg_database")]
    a_databases = [
        json.loads(path.read_text())["database"] for path in Path().glob("a-ready-*.json")
    ]
    assert a_databases and url.database not in a_databases
    assert set(a_databases) <= set(present), "B dropped A's databases"
    assert await db_session.scalar(select(func.count(Item.id))) == 0
    Path("b.json").write_text(json.dumps({"database": url.database, "databases": present}))
"""


def items_project(project: Project) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(testkit_app="items_app:app", testkit_schema="items_app:Base.metadata")


# Run A, in the background, is a new interpreter that loads only the plugins it needs.
BACKGROUND_PLUGINS = ("-p", "anyio_fastapi_testkit.plugin", "-p", "xdist")


def pytest_command(*args: str) -> list[str]:
    options = ("-p", "no:cacheprovider", "-p", "no:randomly", *BACKGROUND_PLUGINS)
    return [sys.executable, "-m", "pytest", *options, *args]


def start(project: Project, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        pytest_command(*args),
        cwd=project.pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )


def wait_for_file(project: Project, pattern: str, run: subprocess.Popen[str]) -> Path:
    deadline = time.monotonic() + SUBSESSION_TIMEOUT
    while True:
        found = sorted(project.pytester.path.glob(pattern))
        if found:
            return found[0]
        assert run.poll() is None, run.communicate()[0]
        assert time.monotonic() < deadline, f"no {pattern}"
        time.sleep(0.05)


def finish(project: Project, run: subprocess.Popen[str]) -> str:
    (project.pytester.path / "b-done").write_text("")
    try:
        return run.communicate(timeout=SUBSESSION_TIMEOUT)[0]
    finally:
        if run.poll() is None:
            run.kill()


@pytest.mark.parametrize("a_args", [(), ("-n", "2")], ids=["one-process", "xdist"])
def test_two_runs_at_once_on_one_server_leave_each_other_alone(
    project: Project,
    private_tmpdir: Path,
    shared: URL,
    monkeypatch: pytest.MonkeyPatch,
    a_args: tuple[str, ...],
) -> None:
    items_project(project)
    project.module("test_a", HOLDING_TESTS)
    project.module("test_b", OTHER_RUN_TESTS)
    monkeypatch.setenv("TESTKIT_DATABASE_URL", shared.render_as_string(hide_password=False))
    a = start(project, *a_args, "test_a.py")
    try:
        ready = json.loads(wait_for_file(project, "a-ready-*.json", a).read_text())
        b = project.run("test_b.py")  # B starts, runs and ends while A holds its databases
        b.assert_outcomes(passed=1)
    finally:
        output = finish(project, a)
    assert a.returncode == 0, output
    assert "2 passed" in output, output

    a_database = ready["database"]
    b_seen = json.loads((project.pytester.path / "b.json").read_text())
    for database in (a_database, b_seen["database"]):
        assert database.startswith(f"test_{BASE}_"), database
    a_token = a_database.removeprefix(f"test_{BASE}_")[:8]
    b_token = b_seen["database"].removeprefix(f"test_{BASE}_")[:8]
    assert a_token != b_token, "each run names its databases with its own token"
    assert f"test_{BASE}_{a_token}_template" in b_seen["databases"], "B dropped A's template"
    if a_args:
        assert re.fullmatch(rf"test_{BASE}_{a_token}_gw[01]", a_database), a_database
    assert kit_names(shared) == [], "each run dropped its own databases at its end"
    assert BASE in database_names(shared)
    assert_nothing_left(private_tmpdir)


# Under xdist --dist loadfile each file goes to a worker of its own. The worker of
# test_first.py builds the run's template, then ends its session (and with it its lock) while
# the other worker waits; only then does B run, and only after it does the other worker make
# its database from A's template.
FIRST_WORKER_TESTS = """
import os
from pathlib import Path


def test_build_the_template(database_url):
    Path("first-worker.id.tmp").write_text(os.environ["PYTEST_XDIST_WORKER"])
    os.replace("first-worker.id.tmp", "first-worker.id")  # whole when the other reads it
"""

# A worker's session has ended (the kit has closed its databases and lock) when this runs.
WORKER_END_CONFTEST = """
import os
from pathlib import Path

import pytest


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        Path(f"ended-{worker}").write_text("")
"""

LATER_WORKER_TESTS = """
import time
from pathlib import Path

from sqlalchemy import func, select

from items_app import Item


def wait_for(path):
    deadline = time.monotonic() + 90
    while not Path(path).exists():
        assert time.monotonic() < deadline, f"{path} never came"
        time.sleep(0.05)


def test_1_wait_for_the_first_worker_to_end():
    wait_for("first-worker.id")
    wait_for(f"ended-{Path('first-worker.id').read_text()}")
    Path("a-ready-gap.json").write_text('{"database": null}')
    wait_for("b-done")


async def test_2_clone_the_template_after_b(db_session):
    assert await db_session.scalar(select(func.count(Item.id))) == 0
"""

GAP_CHECK_TEST = """
from sqlalchemy import text


async def test_b(db_session):
    assert (await db_session.execute(text("SELECT 1"))).scalar() == 1
"""


def test_a_run_is_alive_while_none_of_its_workers_holds_a_database(
    project: Project, private_tmpdir: Path, shared: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    items_project(project)
    project.module("test_first", FIRST_WORKER_TESTS)
    project.module("test_later", LATER_WORKER_TESTS)
    project.module("test_b", GAP_CHECK_TEST)
    project.pytester.makeconftest(WORKER_END_CONFTEST)
    monkeypatch.setenv("TESTKIT_DATABASE_URL", shared.render_as_string(hide_password=False))
    a = start(project, "-n", "2", "--dist", "loadfile", "test_first.py", "test_later.py")
    try:
        wait_for_file(project, "a-ready-gap.json", a)
        templates = [name for name in kit_names(shared) if name.endswith("_template")]
        assert len(templates) == 1, templates
        project.run("test_b.py").assert_outcomes(passed=1)  # B's start drops dead runs'
        assert templates[0] in database_names(shared), "B dropped the live run's template"
    finally:
        output = finish(project, a)
    assert a.returncode == 0, output
    assert "3 passed" in output, output
    assert kit_names(shared) == []
    assert_nothing_left(private_tmpdir)


# Loaded with -p: the process dies as it would if killed between CREATE DATABASE and the
# COMMENT that marks the database as the kit's.
KILL_BEFORE_THE_MARK = """
import os
import signal

from anyio_fastapi_testkit._provisioning import databases as _databases


def _killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


_databases._mark = _killed
"""

KILLED_MID_RUN = """
import os
import signal


def test_killed(database_url):
    os.kill(os.getpid(), signal.SIGKILL)  # its databases stay, marked, with a free lock
"""

SURVIVOR_TEST = """
async def test_fine(db_session):
    pass
"""


def test_the_next_run_drops_what_killed_runs_left_and_nothing_else(
    project: Project, private_tmpdir: Path, shared: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    items_project(project)
    project.module("kill_before_the_mark", KILL_BEFORE_THE_MARK)
    project.module("test_killed", KILLED_MID_RUN)
    project.module("test_fine", SURVIVOR_TEST)
    monkeypatch.setenv("TESTKIT_DATABASE_URL", shared.render_as_string(hide_password=False))
    for name in FOREIGN[1:]:
        create_by_hand(shared, name)  # named like the kit's, made by somebody else
    # A live run of another project on the same server: marked, its lock held.
    live = "4242-11ve11ve"
    lock = RunLock(shared, live)
    try:
        live_db = test_database_names(BASE, None, run_token(live))[1]
        create_by_hand(shared, live_db, ownership_comment(live, locked=True))

        # Killed between CREATE DATABASE and COMMENT: what it made is under a pending name.
        killed = project.run("-p", "kill_before_the_mark", "test_fine.py")
        assert killed.ret not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
        wait_until_no_database_is_being_created(shared)  # the server ends what it began
        half_made = [name for name in kit_names(shared) if name.startswith(PENDING_PREFIX)]
        assert half_made, "the killed run made nothing"
        assert all(comment_of(shared, name) is None for name in half_made)
        assert [name for name in kit_names(shared) if name != live_db] == half_made, (
            "a database under a final name is always marked"
        )
        # Killed with its databases made and marked.
        assert project.run("test_killed.py").ret not in (0, 1)
        marked = [name for name in kit_names(shared) if name not in (live_db, *half_made)]
        assert len(marked) == 2 and any(name.endswith("_template") for name in marked), marked

        project.run("test_fine.py").assert_outcomes(passed=1)

        assert kit_names(shared) == [live_db], "the dead runs' databases were dropped"
        assert intact(shared, live_db)
        for name in FOREIGN:
            if name != BASE:
                assert intact(shared, name), f"{name} (not the kit's) was touched"
    finally:
        lock.release()
    assert BASE in database_names(shared)
    assert_nothing_left(private_tmpdir)


def wait_until_no_database_is_being_created(url: URL) -> None:
    deadline = time.monotonic() + 30
    query = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE state = 'active' AND query ILIKE 'CREATE DATABASE%'"
    )
    while sql_rows(url, query) != [(0,)]:
        assert time.monotonic() < deadline, "CREATE DATABASE did not end"
        time.sleep(0.05)


def test_a_leftover_the_run_may_not_drop_is_reported_and_the_run_goes_on(
    project: Project, private_tmpdir: Path, shared: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another developer's killed run left it, as another user: this run's user may not drop it.
    leftover = f"test_{BASE}_deadbeef"
    create_by_hand(shared, leftover, ownership_comment("9-deadbeef", locked=True))
    sql_rows(shared, "CREATE ROLE tk_other LOGIN CREATEDB PASSWORD 'other-pw-123'")
    try:
        other = shared.set(username="tk_other", password="other-pw-123")
        items_project(project)
        project.module("test_fine", SURVIVOR_TEST)
        monkeypatch.setenv("TESTKIT_DATABASE_URL", other.render_as_string(hide_password=False))
        result = project.run("test_fine.py")
        result.assert_outcomes(passed=1, warnings=1)
        output = "\n".join([*result.outlines, *result.errlines])
        assert "LeftoverWarning" in output and "could not drop them" in output, output
        assert f"Could not drop database '{leftover}'" in output
        assert "must be owner of database" in output
        assert f'DROP DATABASE "{leftover}" WITH (FORCE);' in output
        assert "postgresql://tk_other:***@" in output and "other-pw-123" not in output
        assert intact(shared, leftover)
        assert kit_names(shared) == [leftover], "the run dropped its own databases"
    finally:
        drop_by_hand(shared, leftover)
        for name in kit_names(shared):
            drop_by_hand(shared, name)
        sql_rows(shared, "DROP ROLE IF EXISTS tk_other")
    assert_nothing_left(private_tmpdir)


# The kit's own cached cluster: a run killed between CREATE DATABASE and COMMENT must not
# leave an unmarked database under a name the next run needs (it would refuse it forever).
CACHED_RECORDING_TEST = """
import json
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url


def test_record(database_url):
    url = make_url(str(database_url)).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the run's spare is made
            spares = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname LIKE 'test_spare_%' "
                "AND shobj_description(oid, 'pg_database') IS NOT NULL"
            ).fetchall()
            if spares:
                break
            time.sleep(0.05)
        names = [name for (name,) in conn.execute("SELECT datname FROM pg_database")]
    Path("cached.json").write_text(json.dumps({"database": url.database, "databases": names}))
"""


def test_a_run_killed_before_the_mark_does_not_block_the_cached_cluster(
    project: Project, private_tmpdir: Path
) -> None:
    items_project(project)
    project.module("kill_before_the_mark", KILL_BEFORE_THE_MARK)
    project.module("test_record", CACHED_RECORDING_TEST)
    # With pytest's cache provider on: the cached cluster.
    killed = run_with_cache(project.pytester, "-p", "kill_before_the_mark")
    assert killed.ret not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    base = private_tmpdir / f"anyio-fastapi-testkit-{os.getuid()}"
    assert list(base.glob("cache-*")), "the killed run used no cached cluster"

    run_with_cache(project.pytester).assert_outcomes(passed=1)

    seen = json.loads((project.pytester.path / "cached.json").read_text())
    assert seen["database"] == "test_app"
    assert [name for name in seen["databases"] if name.startswith(PENDING_PREFIX)] == []
    assert_nothing_left(private_tmpdir)
