"""A server that dies or stops answering mid-session: the run stops once, names what was
lost, stays within its limits, and still cleans up."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ITEMS_APP, Project, assert_nothing_left

from anyio_fastapi_testkit._postgres.server import connect_admin, start_server

# The third test ends the server the way a crash or an OOM kill does: SIGQUIT to the
# postmaster is PostgreSQL's immediate shutdown (every backend ends at once, no checkpoint).
KILLING_TESTS = """
import os
import signal
from pathlib import Path

import anyio
import psutil
from sqlalchemy import text

DIED = Path(__file__).with_name("server-died")


async def died():
    # Under xdist the other worker may otherwise run all its tests before the server dies.
    with anyio.fail_after(60):
        while not DIED.exists():
            await anyio.sleep(0.01)


async def test_01(db_session):
    assert (await db_session.execute(text("SELECT 1"))).scalar() == 1

async def test_02(client):
    assert (await client.get("/items")).json() == []

async def test_03_server_dies(db_session):
    backend = (await db_session.execute(text("SELECT pg_backend_pid()"))).scalar()
    postmaster = psutil.Process(backend).ppid()
    os.kill(postmaster, signal.{signal})
    await anyio.to_thread.run_sync(psutil.Process(postmaster).wait, 30)
    DIED.touch()
    {then}

{rest}
"""

REST = "\n".join(
    f"async def test_{n:02d}(db_session, client):\n"
    f"    assert (await client.get('/items')).json() == []\n"
    for n in range(4, 31)
)
# After the killing test: under xdist the other worker waits for the death first.
REST_AFTER_DEATH = REST.replace("):\n", "):\n    await died()\n")


@pytest.fixture(autouse=True)
def _no_configured_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESTKIT_DATABASE_URL", raising=False)


@pytest.mark.parametrize(
    ("signal", "then"),
    [
        ("SIGQUIT", ""),  # found gone by the kit's teardown
        ("SIGKILL", "await db_session.execute(text('SELECT 1'))"),  # by the test itself
    ],
)
def test_a_dead_server_stops_the_run_once(
    project: Project, private_tmpdir: Path, signal: str, then: str
) -> None:
    result, output = _run_killing_tests(project, signal, then=then)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 2, output
    assert outcomes.get("errors", 0) + outcomes.get("failed", 0) == 1, output
    assert "stopped answering during test_dies.py::test_03_server_dies" in output
    assert "(27 tests not run)" in output
    assert "password" not in output and "Traceback" not in output
    assert_nothing_left(private_tmpdir)


def test_a_dead_configured_server_stops_the_run_once(
    project: Project, private_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with start_server(None, base_dir=private_tmpdir / "team-server") as server:
        url = server.info.admin_url
        monkeypatch.setenv("TESTKIT_DATABASE_URL", url.render_as_string(hide_password=False))
        result, output = _run_killing_tests(project, "SIGQUIT")
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) + outcomes.get("failed", 0) == 1, output
    assert "stopped answering during test_dies.py::test_03_server_dies" in output
    assert str(url.password) not in output and "Traceback" not in output


def test_a_dead_server_stops_each_xdist_worker_once(project: Project, private_tmpdir: Path) -> None:
    result, output = _run_killing_tests(project, "SIGQUIT", "-n", "2")
    outcomes = result.parseoutcomes()
    assert 1 <= outcomes.get("errors", 0) + outcomes.get("failed", 0) <= 2, output
    assert "stopped answering during test_dies.py::" in output
    assert outcomes.get("passed", 0) + outcomes.get("errors", 0) < 30, output
    assert "Traceback" not in output
    assert_nothing_left(private_tmpdir)


# The server dies while the kit makes the template, between two of its statements on one
# admin connection: its next statement there fails on psycopg's own error. (Under xdist a
# worker making its database while another worker's test killed the server met this.) The
# kit makes the working database beside the template, in its "testkit-schema" thread: that
# thread is let through, so that the template's statement is the one that meets the death.
DIES_WHILE_MADE = """
import os
import signal
import threading

import psutil

from anyio_fastapi_testkit._provisioning import databases

_sessions = databases._sessions


def _server_dies_first(conn, database):
    if threading.current_thread().name.startswith("testkit-schema"):
        return _sessions(conn, database)
    databases._sessions = _sessions
    postmaster = psutil.Process(conn.info.backend_pid).ppid()
    os.kill(postmaster, signal.SIGQUIT)
    psutil.Process(postmaster).wait(30)
    return _sessions(conn, database)


databases._sessions = _server_dies_first
"""


def test_a_server_that_dies_while_the_database_is_made_stops_the_run_once(
    project: Project, private_tmpdir: Path
) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(testkit_app="items_app:app", testkit_schema="items_app:Base.metadata")
    project.pytester.makeconftest(DIES_WHILE_MADE)
    project.module("test_items", REST)
    result = project.run("-q")
    output = "\n".join(result.outlines + result.errlines)
    result.assert_outcomes(errors=1)
    assert "failed a statement of the kit's while it made this run's test database" in output
    assert "(26 more tests not run)" in output, output
    assert "password" not in output and "Traceback" not in output
    assert_nothing_left(private_tmpdir)


def _run_killing_tests(
    project: Project, signal: str, *args: str, then: str = ""
) -> tuple[pytest.RunResult, str]:
    project.module("items_app", ITEMS_APP)
    project.ini(
        testkit_app="items_app:app",
        testkit_schema="items_app:Base.metadata",
        testkit_session_dependency="items_app:get_session",
    )
    project.module(
        "test_dies", KILLING_TESTS.format(signal=signal, rest=REST_AFTER_DEATH, then=then)
    )
    result = project.run("-q", *args)
    return result, "\n".join(result.outlines + result.errlines)


# The second test stops every process of the server (SIGSTOP), as a hung host or a frozen VM
# does: connections stay open, nothing answers. The server is let go (SIGKILL) by the
# private_tmpdir fixture afterwards.
#
# What is waited out on purpose is the tests' limit (HANG_LIMIT, by marker), then the kit's
# 3 s probe of a new connection; under xdist, the other worker's next set-up waits out the
# setting (HANG_SETTING) on the kit's statement to the hung server. Both are set as low as the
# work that must pass under them allows: a test's own few statements under the marker, and
# the kit's statements of the set-up before the hang under the setting (each bounded alone).
# The server, the template and each worker's database are made before the first test by a
# session fixture, bounded by the setting per statement only: a loaded machine slows the
# start, which the short limit would break. The server hangs once every worker has its
# database, so that no worker waits out the setting while it makes one.
HANG_LIMIT = 1
HANG_SETTING = 3

HANGING_PREAMBLE = f"""
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import text

pytestmark = pytest.mark.testkit_timeout({HANG_LIMIT})


@pytest.fixture(scope="session", autouse=True)
def _provisioned(database_url, pytestconfig):
    # From xdist's workerinput, not the environment: this run's outer pytest may be a worker.
    given = getattr(pytestconfig, "workerinput", dict(workerid="main", workercount=1))
    Path("provisioned-" + given["workerid"]).touch()
    workers = given["workercount"]
    deadline = time.monotonic() + 120  # only against waiting forever
    while len(list(Path().glob("provisioned-*"))) < workers and time.monotonic() < deadline:
        time.sleep(0.05)


def _stop_server(backend):
    postmaster = psutil.Process(psutil.Process(backend).ppid())
    stopped = [postmaster, *postmaster.children()]
    for process in stopped:
        os.kill(process.pid, signal.SIGSTOP)
    Path("stopped-pids").write_text(" ".join(str(process.pid) for process in stopped))
"""

HANGING_TESTS = (
    HANGING_PREAMBLE
    + """
async def test_01(db_session):
    assert (await db_session.execute(text("SELECT 1"))).scalar() == 1

async def test_02_server_hangs(db_session):
    _stop_server((await db_session.execute(text("SELECT pg_backend_pid()"))).scalar())
    await db_session.execute(text("SELECT 1"))

def test_03_sync(db_session_sync):
    db_session_sync.execute(text("SELECT 1"))

{rest}
"""
)

SYNC_HANGING_TESTS = (
    HANGING_PREAMBLE
    + """
def test_01(db_session_sync):
    assert db_session_sync.execute(text("SELECT 1")).scalar() == 1

def test_02_server_hangs(db_session_sync):
    _stop_server(db_session_sync.execute(text("SELECT pg_backend_pid()")).scalar())
    db_session_sync.execute(text("SELECT 1"))

{rest}
"""
)

# The server stops at the end of a request, after the endpoint's query: the kit's request
# session is committed and closed where FastAPI shields a dependency's exit from cancellation.
REQUEST_CLEANUP_HANGING_TESTS = (
    HANGING_PREAMBLE
    + """
from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession

from items_app import app, get_session


@app.get("/stop-the-server")
async def stop_the_server(session: AsyncSession = Depends(get_session)):
    _stop_server((await session.execute(text("SELECT pg_backend_pid()"))).scalar())
    return "stopped"


async def test_01(db_session):
    assert (await db_session.execute(text("SELECT 1"))).scalar() == 1

async def test_02_server_hangs(client):
    await client.get("/stop-the-server")

{rest}
"""
)

# The same, for a session of the app's own sessionmaker (testkit_sessionmaker), committed and
# closed by the app's own dependency: the plain way, or by its sessionmaker's begin(). One
# case each: after the first cleanup is cancelled, the driver closes the connection, and a
# second one would fail at once rather than wait.
APP_SESSION_CLEANUP_HANGING_TESTS = (
    HANGING_PREAMBLE
    + """
from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession

from items_app import SessionLocal, app

{{dependency}}

@app.get("/stop-the-server")
async def stop_the_server(session: AsyncSession = Depends(get_own_session)):
    _stop_server((await session.execute(text("SELECT pg_backend_pid()"))).scalar())
    return "stopped"


async def test_01(db_session):
    assert (await db_session.execute(text("SELECT 1"))).scalar() == 1

async def test_02_server_hangs(client):
    await client.get("/stop-the-server")

{rest}
"""
)
COMMIT_THEN_CLOSE = """
async def get_own_session():
    async with SessionLocal() as session:
        yield session
        await session.commit()
"""
IN_A_BEGIN_BLOCK = """
async def get_own_session():
    async with SessionLocal.begin() as session:
        yield session
"""

# In xdist's controller (which runs no test): a line for each try at the run's databases on
# the server, or at a probe of it, at the end of the run. Counted, not timed: each would wait
# out a connect timeout on a hung server.
CONTROLLER_CALLS = "controller-calls.txt"
CONTROLLER_SPY = f"""
from pathlib import Path


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        return
    from anyio_fastapi_testkit._postgres import server
    from anyio_fastapi_testkit._provisioning import owned

    calls = Path(config.rootpath, "{CONTROLLER_CALLS}")
    calls.write_text("")
    for module, name in ((owned, "drop_run_databases"), (server, "server_answers_at")):
        real = getattr(module, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            with calls.open("a") as handle:
                handle.write(_name + "\\n")
            return _real(*args, **kwargs)

        setattr(module, name, counted)
"""


OWN = {"testkit_sessionmaker": "items_app:SessionLocal"}


@pytest.mark.parametrize(
    ("tests", "args", "settings"),
    [
        (HANGING_TESTS, (), {}),
        (SYNC_HANGING_TESTS, (), {}),
        (REQUEST_CLEANUP_HANGING_TESTS, (), {}),
        (APP_SESSION_CLEANUP_HANGING_TESTS.replace("{{dependency}}", COMMIT_THEN_CLOSE), (), OWN),
        (APP_SESSION_CLEANUP_HANGING_TESTS.replace("{{dependency}}", IN_A_BEGIN_BLOCK), (), OWN),
        (HANGING_TESTS, ("-n", "2"), {}),
    ],
    ids=[
        "async",
        "sync",
        "request-cleanup",
        "app-session-cleanup",
        "app-session-begin-cleanup",
        "xdist",
    ],
)
def test_a_hung_server_ends_the_run_within_the_timeout(
    project: Project,
    private_tmpdir: Path,
    tests: str,
    args: tuple[str, ...],
    settings: dict[str, str],
) -> None:
    _hanging_project(project, tests, **settings)
    if args:
        project.module("conftest", CONTROLLER_SPY)
    result = project.run("-q", *args)
    output = "\n".join(result.outlines + result.errlines)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 1, output
    assert outcomes.get("errors", 0) + outcomes.get("failed", 0) <= 2, output
    assert "stopped answering" in output
    assert "INTERNALERROR" not in output
    if args:
        # The workers found the server hung: the controller went straight to stopping it,
        # with no try at the drops on it and no probe of it.
        calls = (project.pytester.path / CONTROLLER_CALLS).read_text().split()
        assert calls == [], output
    assert_nothing_left(private_tmpdir)


# The server the workers found hung answers again by the controller's end of the run.
CONTROLLER_RESUMES = """
import os
import signal

import pytest


@pytest.hookimpl(tryfirst=True)  # before the kit's
def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        for pid in Path(config.rootpath, "stopped-pids").read_text().split():
            os.kill(int(pid), signal.SIGCONT)
"""


def test_a_configured_server_that_hung_gets_the_runs_databases_dropped_once_it_answers(
    project: Project, private_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with start_server(None, base_dir=private_tmpdir / "team-server") as server:
        url = server.info.admin_url
        monkeypatch.setenv("TESTKIT_DATABASE_URL", url.render_as_string(hide_password=False))
        _hanging_project(project, HANGING_TESTS)
        project.module("conftest", CONTROLLER_SPY + CONTROLLER_RESUMES)
        result = project.run("-q", "-n", "2")
        with connect_admin(url) as conn:
            rows = conn.execute("SELECT datname FROM pg_database").fetchall()
    output = "\n".join(result.outlines + result.errlines)
    assert "stopped answering" in output
    assert "INTERNALERROR" not in output
    # One probe of the server the workers found hung; it answered: the drops were made.
    calls = (project.pytester.path / CONTROLLER_CALLS).read_text().split()
    assert calls == ["server_answers_at", "drop_run_databases"], output
    left = sorted({str(name) for (name,) in rows} - {"postgres", "template0", "template1"})
    assert left == [], output


def _hanging_project(project: Project, tests: str, **settings: str) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(
        testkit_app="items_app:app",
        testkit_schema="items_app:Base.metadata",
        testkit_session_dependency="items_app:get_session",
        testkit_timeout=str(HANG_SETTING),
        **settings,
    )
    project.module("test_hangs", tests.format(rest=REST))
