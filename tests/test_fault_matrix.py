"""Cleanup in every order (issue 21, item 10): real pytest runs of a small project are
disturbed at each phase of a run, on each kind of server, by each signal a user's machine or CI
sends, and then the same project is run again, as it is, with nothing done by hand.

For every cell of the matrix (server x signal x phase) the next run must pass; after it no
process of the disturbed run and no server of the kit's may be left (nor a state folder, nor,
on a configured server, a database of the kit's); and a configured server's own databases (the
canaries) must hold the same rows, under the same names, as before.

Axes:
  * server: ``fresh`` (embedded, ``-p no:cacheprovider``: a throwaway cluster), ``cached``
    (embedded, pytest's cache on: the kit's cached cluster, cold at the disturbed run),
    ``cached-env`` (as ``cached``, with ``testkit_database_env``: the test database is made
    before the conftest files are imported, where the project's settings module reads it),
    ``configured`` (a server of the test's own, through ``TESTKIT_DATABASE_URL``) and
    ``xdist`` (``-n 2``, cache on);
  * signal: SIGKILL (an OOM kill, a killed CI job), SIGINT (Ctrl-C: a terminal sends it to the
    whole foreground process group) and SIGTERM (CI's cancel), all sent to the run's process
    group;
  * phase, each reached by waiting on a marker, never on a delay:
      - ``initdb``, ``server_start``, ``server_stop``: the kit's ``initdb``, ``pg_ctl start`` or
        ``pg_ctl stop`` child is found running and frozen (SIGSTOP) while the signal is sent,
        then let go (SIGCONT), so the signal lands inside that step;
      - ``template``: the Alembic ``env.py`` writes a marker and waits;
      - ``working_db``: ``env.py`` reports the template built; the test then holds a lock on the
        template database (the lock ``COMMENT ON DATABASE`` takes, in a transaction rolled back
        afterwards) until the kit's ``CREATE DATABASE ... TEMPLATE`` is seen waiting for it;
      - ``mid_test``: a test writes a marker and waits;
      - ``teardown``: a session fixture's teardown writes a marker and waits;
      - ``drop``: the same lock, on the working database, holds the kit's final
        ``DROP DATABASE`` until it is seen waiting.
    The embedded server's phases (``initdb``, ``server_start``, ``server_stop``) do not exist
    on a configured server; ``drop`` is the last step there. Nor does ``server_stop`` with
    ``cached`` and ``cached-env``: a run that ends asks its cached server to stop and does not
    wait (no ``pg_ctl stop``); the next run's start, which the matrix runs, waits for that end.
    With ``cached-env`` the first four phases happen in ``pytest_load_initial_conftests``,
    before pytest has its session, its own Ctrl-C handling or the kit its SIGTERM handler; each
    phase is still reached by the same marker, as each marker is written by the same step of
    the kit's wherever that step runs.

By default a diagonal of nine cells runs (each phase once, and ``drop`` twice, each signal at
least twice, each server kind at least once);
``TESTKIT_FAULT_MATRIX=full`` runs the whole cross product (``.ci/fault-matrix``).
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import psycopg
import pytest
from conftest import (
    ITEMS_APP,
    SUBSESSION_TIMEOUT,
    Project,
    assert_nothing_left,
    database_names,
    lock_on_database,
    plugin_options,
    postgres_processes_under,
)
from psycopg import sql
from scaffolding import items_revision, write_alembic
from sqlalchemy.engine import URL, make_url

# The only import of the kit's internals: it starts the server the "configured" cells use.
from anyio_fastapi_testkit._postgres.cluster import _WAIT_FOR_PG_CTL
from anyio_fastapi_testkit._postgres.server import RunningServer, start_server

T = TypeVar("T")

SERVERS = ("fresh", "cached", "cached-env", "configured", "xdist")
SIGNALS = (signal.SIGKILL, signal.SIGINT, signal.SIGTERM)
PHASES = (
    "initdb",
    "server_start",
    "template",
    "working_db",
    "mid_test",
    "teardown",
    "drop",
    "server_stop",
)
EMBEDDED_ONLY = {"initdb", "server_start", "server_stop"}
NOT_WAITED_FOR = {"cached", "cached-env"}  # no server_stop phase: the end does not wait

# Each phase once, each signal at least twice, each server kind at least once; both ways an
# early stop reaches ``cached-env`` (SIGTERM, SIGINT) while the database is made before the
# conftest files; and a Ctrl-C while xdist's controller waits for its workers to drop their
# databases (pytest itself would end the controller in a traceback there).
DIAGONAL = {
    ("fresh", signal.SIGKILL, "initdb"),
    ("cached-env", signal.SIGTERM, "server_start"),
    ("cached-env", signal.SIGINT, "template"),
    ("xdist", signal.SIGKILL, "working_db"),
    ("cached", signal.SIGINT, "mid_test"),
    ("xdist", signal.SIGTERM, "teardown"),
    ("configured", signal.SIGKILL, "drop"),
    ("fresh", signal.SIGINT, "server_stop"),
    ("xdist", signal.SIGINT, "drop"),
}
FULL = os.environ.get("TESTKIT_FAULT_MATRIX") == "full"


class NotAnOrdinaryStop(Exception):
    """The disturbed run did not end as pytest ends an interrupted run (issue 21, item 8)."""


# A stop by SIGINT or SIGTERM is an ordinary one: pytest's interrupted summary, exit status 2,
# no crash; checked last in each cell. Where it is not yet, the cell is an xfail for that check
# alone (``raises``), and strict: a cell that now stops cleanly fails until taken off the list.
# None now: a signal during the kit's end-of-run cleanup is noted and the cleanup finishes,
# then the run ends as interrupted (it used to escape as a KeyboardInterrupt traceback).
KNOWN_CRASHES: dict[tuple[str, signal.Signals, str], str] = {}

# The configured server's database names the kit would pick (``test_<base>_<token>...``) and
# the names it makes databases under before it marks them.
PENDING_PREFIX = "anyio_fastapi_testkit_creating_"

# --- the project -------------------------------------------------------------------------------

# Shared by env.py, conftest.py and the tests: where the markers go, and how to wait.
FAULT_HELPERS = """
import json
import os
import time
from pathlib import Path

PHASE = os.environ.get("FAULT_PHASE")
FOLDER = Path(os.environ.get("FAULT_DIR", "."))


def mark(name, data=None):
    # Written whole, then renamed: the test never reads half a marker.
    part = FOLDER / f"{name}.part-{os.getpid()}"
    part.write_text(json.dumps(data if data is not None else os.getpid()))
    part.rename(FOLDER / name)


def claim(name):
    # The first process to ask gets it (one xdist worker of two).
    try:
        (FOLDER / name).open("x").close()
    except FileExistsError:
        return False
    return True


def wait_for(name):
    # Until the test says so; the bound only keeps a forgotten process from waiting forever.
    deadline = time.monotonic() + 600
    while not (FOLDER / name).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
"""

FAULT_ALEMBIC_ENV = """
from alembic import context
from sqlalchemy import create_engine, pool

from fault_helpers import PHASE, claim, mark, wait_for

url = context.config.get_main_option("sqlalchemy.url")
if PHASE == "template":
    mark("phase-template")
    wait_for("release")
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
if PHASE == "working_db" and claim("claim-working_db"):
    mark("template-built", {"url": url})
    wait_for("go")
"""

CONFTEST = """
import time

import pytest

import app_settings
from fault_helpers import PHASE, claim, mark, wait_for


@pytest.fixture(scope="session", autouse=True)
def fault_at_teardown(database_url):
    yield
    # One worker of two waits: the other, stopped by the same signal before its own teardown,
    # must not then wait in it (xdist would end it after 10 s, unseen by the cell).
    if PHASE == "teardown" and claim("claim-teardown"):
        mark("phase-teardown")
        wait_for("release")
    elif PHASE == "drop" and claim("claim-drop"):
        mark("dropping", {"url": str(database_url)})
        wait_for("go")
"""

# As an app's settings are read: at import, by the conftest.py that imports the app. Only
# with testkit_database_env is DATABASE_URL the test database's (checked by
# check_embedded_databases); the app's own get_session, which would read it, is overridden.
APP_SETTINGS = """
import os

DATABASE_URL = os.environ.get("DATABASE_URL")
"""

TESTS = """
import os

import anyio
import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

import app_settings
from fault_helpers import FOLDER, PHASE, mark
from items_app import Item


async def test_create_and_list(client):
    assert (await client.post("/items", json={"name": "pen"})).status_code == 201
    assert (await client.get("/items")).json() == ["pen"]


async def test_isolated(db_session):
    assert await db_session.scalar(select(func.count(Item.id))) == 0


async def test_maybe_interrupted(db_session):
    db_session.add(Item(name="ink"))
    await db_session.flush()
    if PHASE == "mid_test":
        mark("phase-mid_test")
        while not (FOLDER / "release").exists():
            await anyio.sleep(0.05)


def test_record_the_databases(database_url):
    url = make_url(str(database_url)).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        names = [name for (name,) in conn.execute("SELECT datname FROM pg_database")]
    record = {"database": url.database, "databases": names, "env": app_settings.DATABASE_URL}
    mark(f"seen-{os.getpid()}", record)
"""
TEST_COUNT = 4


def make_project(project: Project, server: str) -> None:
    project.module("items_app", ITEMS_APP)  # its get_session fails unless overridden
    project.module("app_settings", APP_SETTINGS)
    project.module("fault_helpers", FAULT_HELPERS)
    project.module("conftest", CONFTEST)
    project.module("test_items", TESTS)
    write_alembic(project.pytester.path, {"0001_items.py": items_revision()}, env=FAULT_ALEMBIC_ENV)
    settings = {
        "testkit_app": "items_app:app",
        "testkit_schema": "alembic:alembic.ini",
        "testkit_session_dependency": "items_app:get_session",
    }
    if server == "cached-env":
        settings["testkit_database_env"] = "DATABASE_URL"
    project.ini(**settings)


# --- the runs ----------------------------------------------------------------------------------


def pytest_args(server: str) -> list[str]:
    args = ["-q"]
    if server in ("fresh", "configured"):
        args += ["-p", "no:cacheprovider"]
    if server == "xdist":
        args += ["-n", "2"]
    options, after = plugin_options(args)  # the kit and the plugins it meets, by name
    return [sys.executable, "-m", "pytest", *options, *args, *after]


@dataclass
class Run:
    """One pytest run of the project, in a process group (a session) of its own."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def members(self) -> list[psutil.Process]:
        """The processes still in the run's session (the kit's children, xdist workers)."""
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(process.pid) == self.pid and process.status() != "zombie":
                    found.append(process)
        return found

    def wait(self, what: str) -> int:
        try:
            return self.process.wait(SUBSESSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the run did not end {what}:\n{self.output()}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()


def start(folder: Path, server: str, name: str, env: dict[str, str]) -> Run:
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            pytest_args(server),
            cwd=folder,
            env={**os.environ, "FAULT_DIR": str(folder), **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: the signal reaches all of it
        )
    return Run(process, log)


def wait_until(run: Run | None, what: str, found: Callable[[], T | None]) -> T:
    """Poll ``found`` until it finds something; ``run`` must still be going meanwhile."""
    deadline = time.monotonic() + SUBSESSION_TIMEOUT
    while True:
        value = found()
        if value is not None:
            return value
        # Short looks, the run's output read only for a failure: a pg_ctl stop lives about
        # 0.1 s, and on a loaded machine a slower loop missed it.
        if run is not None and run.process.poll() is not None:
            pytest.fail(f"the run ended before {what}:\n{run.output()}")
        if time.monotonic() > deadline:
            output = "" if run is None else run.output()
            if run is not None:
                run.kill()
            pytest.fail(f"no {what} within {SUBSESSION_TIMEOUT} s:\n{output}")
        time.sleep(0.002)


def marker(folder: Path, name: str) -> Callable[[], Any]:
    def found() -> Any:
        path = folder / name
        return json.loads(path.read_text()) if path.exists() else None

    return found


def child_named(run: Run, name: str, argument: str | None = None) -> Callable[[], Any]:
    """Finds a running descendant of the run by its program name (and one argument)."""

    def found() -> psutil.Process | None:
        with contextlib.suppress(psutil.Error):
            for process in psutil.Process(run.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if process.name() == name and (
                        argument is None or argument in process.cmdline()
                    ):
                        return process
        return None

    return found


def admin_of(url: str) -> URL:
    return make_url(url).set(drivername="postgresql", database="postgres")


def connect(url: URL, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    return psycopg.connect(url.render_as_string(hide_password=False), autocommit=autocommit)


def ended(url: URL, pattern: str) -> Callable[[], bool | None]:
    """Whether no session runs a statement like ``pattern`` (or the server is gone)."""

    def found() -> bool | None:
        try:
            with connect(url) as conn:
                row = conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE query ILIKE %s AND state = 'active' "
                    "AND pid <> pg_backend_pid()",
                    (pattern,),
                ).fetchone()
        except psycopg.OperationalError:  # the run stopped its server: nothing runs
            return True
        return True if row is None else None

    return found


def waiting_statement(url: URL, pattern: str) -> Callable[[], str | None]:
    """Finds a statement of the kit's that waits for a lock (``pattern``: an ILIKE pattern)."""

    def found() -> str | None:
        with connect(url) as conn:
            row = conn.execute(
                "SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query ILIKE %s AND pid <> pg_backend_pid()",
                (pattern,),
            ).fetchone()
        return None if row is None else str(row[0])

    return found


@contextlib.contextmanager
def at_phase(run: Run, phase: str, folder: Path) -> Iterator[None]:
    """Returns once the run is inside ``phase``, and holds it there until the signal is sent."""
    if phase in ("initdb", "server_start", "server_stop"):
        program, argument = {
            "initdb": ("initdb", None),
            "server_start": ("pg_ctl", "start"),
            "server_stop": ("pg_ctl", "stop"),
        }[phase]
        step = wait_until(run, f"{program} {argument or ''}", child_named(run, program, argument))
        with contextlib.suppress(psutil.Error):
            step.suspend()  # SIGSTOP: the step cannot end before the signal lands
        try:
            yield
        finally:
            with contextlib.suppress(psutil.Error):
                step.resume()
    elif phase in ("template", "mid_test", "teardown"):
        wait_until(run, f"the {phase} marker", marker(folder, f"phase-{phase}"))
        yield
    elif phase in ("working_db", "drop"):
        # The database to hold, and the kit's statement on it that must wait for the lock.
        if phase == "working_db":
            where = wait_until(run, "the template", marker(folder, "template-built"))
            name = str(make_url(where["url"]).database)
            pattern = f'CREATE DATABASE % TEMPLATE "{name}"%'
        else:
            where = wait_until(run, "the end of the tests", marker(folder, "dropping"))
            name = str(make_url(where["url"]).database)
            pattern = f'DROP DATABASE %"{name}"%'
        admin = admin_of(where["url"])
        with lock_on_database(admin, name):
            (folder / "go").touch()
            wait_until(run, f"the kit's {pattern}", waiting_statement(admin, pattern))
            yield
        # A killed client's statement runs on in the server once the lock is free: the next
        # run starts after it ended (else what it makes could come after the next run's sweep).
        wait_until(None, f"the end of {pattern}", ended(admin, pattern))
    else:
        raise AssertionError(phase)


# --- a configured server with canaries -------------------------------------------------------


@dataclass
class Configured:
    """The configured URL's database and canary databases on a server of the test's own."""

    admin: URL
    base: str
    canaries: tuple[str, ...]
    before: list[str]

    @property
    def url(self) -> URL:
        return self.admin.set(database=self.base)

    def snapshot(self) -> dict[str, Any]:
        """Everything the kit must not touch: each canary's comment and rows, in order."""
        state: dict[str, Any] = {}
        with connect(self.admin) as conn:
            for name, comment in conn.execute(
                "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
                "WHERE datname = ANY(%s)",
                (list(self.canaries),),
            ):
                state[name] = {"comment": comment}
        for name in self.canaries:
            with connect(self.admin.set(database=name)) as conn:
                rows = conn.execute("SELECT id, note, data FROM canary ORDER BY id").fetchall()
                tables = conn.execute(
                    "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                    "ORDER BY relname"
                ).fetchall()
            state.setdefault(name, {}).update(rows=[list(map(str, row)) for row in rows])
            state[name]["relations"] = [name for (name,) in tables]
        return state


@pytest.fixture(scope="module")
def team_server() -> Iterator[RunningServer]:
    """A server of the tests' own, standing in for a team's: under /tmp, whatever TMPDIR says
    (each cell's private TMPDIR is searched for leftovers and its servers killed at the end)."""
    base = Path(tempfile.mkdtemp(prefix="tk-fm-", dir="/tmp"))
    server = start_server(None, base_dir=base)
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def configured_server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Configured]:
    server: RunningServer = request.getfixturevalue("team_server")
    admin = server.info.admin_url
    base = f"fm_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    # The configured URL's own database; one of another name; one named as the kit's are.
    canaries = (base, f"canary_{base}", f"test_{base}_canary")
    before = database_names(admin)
    for name in canaries:
        with connect(admin) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with connect(admin.set(database=name)) as conn:
            conn.execute("CREATE TABLE canary (id int PRIMARY KEY, note text, data bytea)")
            conn.execute(
                "INSERT INTO canary SELECT n, 'keep me ' || n, sha256(n::text::bytea) "
                "FROM generate_series(1, 50) n"
            )
    configured = Configured(admin, base, canaries, before)
    monkeypatch.setenv("TESTKIT_DATABASE_URL", configured.url.render_as_string(hide_password=False))
    yield configured
    for name in set(database_names(admin)) - set(before):  # whatever happened
        with connect(admin) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --- the matrix --------------------------------------------------------------------------------


def cells() -> Iterator[Any]:
    for server in SERVERS:
        for sig in SIGNALS:
            for phase in PHASES:
                if server == "configured" and phase in EMBEDDED_ONLY:
                    continue
                if server in NOT_WAITED_FOR and phase == "server_stop":
                    continue
                cell = (server, sig, phase)
                if not FULL and cell not in DIAGONAL:
                    continue
                marks = []
                if cell in KNOWN_CRASHES:
                    # Only this check may fail: any other failure of the cell still fails it.
                    xfail = pytest.mark.xfail(
                        strict=True, raises=NotAnOrdinaryStop, reason=KNOWN_CRASHES[cell]
                    )
                    marks.append(xfail)
                yield pytest.param(*cell, id=f"{server}-{sig.name}-{phase}", marks=marks)


@pytest.mark.skipif(sys.platform != "linux", reason="process groups and /proc: Linux only")
@pytest.mark.parametrize(("server", "sig", "phase"), list(cells()))
def test_the_next_run_passes_and_nothing_is_left(
    project: Project,
    private_tmpdir: Path,
    request: pytest.FixtureRequest,
    server: str,
    sig: signal.Signals,
    phase: str,
) -> None:
    make_project(project, server)
    folder = project.pytester.path
    configured = request.getfixturevalue("configured_server") if server == "configured" else None
    canaries = configured.snapshot() if configured else None

    env = {"FAULT_PHASE": phase}
    if phase in ("server_start", "server_stop"):
        # The kit ends a start or stop as soon as the server is ready or gone, without waiting
        # for pg_ctl: told so, it waits for pg_ctl alone, and a frozen pg_ctl holds the step.
        env[_WAIT_FOR_PG_CTL] = "1"
    disturbed = start(folder, server, "disturbed", env)
    try:
        with at_phase(disturbed, phase, folder):
            os.killpg(disturbed.pid, sig)
        code = disturbed.wait(f"after {sig.name} at {phase}")
        stragglers = disturbed.members()
        output = disturbed.output()

        for name in ("release", "go"):  # markers of the disturbed run only
            (folder / name).unlink(missing_ok=True)
        for seen in folder.glob("seen-*"):
            seen.unlink()
        after = start(folder, server, "next", {})
        try:
            assert after.wait("(the next run)") == 0, (
                f"the run after {sig.name} at {phase} (which exited {code}) failed:\n"
                f"{after.output()}\n--- the disturbed run ---\n{output}"
            )
        finally:
            after.kill()
        assert f"{TEST_COUNT} passed" in after.output(), after.output()

        alive = [describe(process) for process in stragglers if running(process)]
        assert alive == [], f"processes of the disturbed run are still running: {alive}"
        assert_nothing_left(private_tmpdir)
        assert postgres_processes_under(private_tmpdir) == []
        if configured is not None:
            assert configured.snapshot() == canaries, "a database not of the kit's changed"
            left = sorted(set(database_names(configured.admin)) - set(configured.before))
            assert left == sorted(configured.canaries), "databases of the kit's were left"
        else:
            check_embedded_databases(folder, env=server == "cached-env")

        if sig != signal.SIGKILL and (
            code != pytest.ExitCode.INTERRUPTED or "INTERNALERROR" in output
        ):
            raise NotAnOrdinaryStop(f"{sig.name} at {phase} (exit {code}):\n{output}")
    finally:
        (folder / "release").touch()
        disturbed.kill()


def running(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())}"
    except psutil.Error:
        return f"pid {process.pid}"


def check_embedded_databases(folder: Path, *, env: bool) -> None:
    """The next run found on its embedded server only the databases it uses itself: working
    databases, the template and spares (or one being made under a pending name); none with a
    name of the disturbed run's alone. (The cached cluster keeps the same names from run to
    run: tests/test_leftovers.py and tests/test_cache_faults.py check its contents closer.)
    With ``env`` (``testkit_database_env``), the settings read at import named the database
    the tests used."""
    records = [json.loads(seen.read_text()) for seen in folder.glob("seen-*")]
    assert records, "the next run recorded no databases"
    for record in records:
        if env:
            assert record["env"] is not None, "DATABASE_URL was unset when the settings were read"
            assert make_url(record["env"]).database == record["database"], record["database"]
        kit = {name for name in record["databases"] if name.startswith(("test_", PENDING_PREFIX))}
        unexpected = {
            name
            for name in kit
            if name not in {"test_app", "test_app_gw0", "test_app_gw1", "test_app_template"}
            and not name.startswith(("test_spare_", PENDING_PREFIX))  # a spare being made
        }
        assert unexpected == set(), f"{record['database']} saw {sorted(kit)}"
