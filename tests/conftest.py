"""Helpers for the plugin's own tests: each runs a real pytest sub-session with pytester."""

from __future__ import annotations

import compileall
import contextlib
import dataclasses
import importlib.util
import os
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest
from forked import run_forked

SUBSESSION_TIMEOUT = 120.0

# httpx2 needs Python 3.11: on 3.10 the client's tests run with httpx alone, and the kit
# prefers httpx2 only where it is installed.
HTTPX2_INSTALLED = importlib.util.find_spec("httpx2") is not None
HTTP_LIBRARIES = ("httpx", "httpx2") if HTTPX2_INSTALLED else ("httpx",)
PREFERRED_LIBRARY = HTTP_LIBRARIES[-1]  # what the kit's client uses by default
needs_httpx2 = pytest.mark.skipif(
    not HTTPX2_INSTALLED, reason="httpx2 is not installed (it needs Python 3.11 or later)"
)

SIMPLE_APP = """
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

events = []


@asynccontextmanager
async def lifespan(app):
    events.append("startup")
    yield {"greeting": "hello"}
    events.append("shutdown")


app = FastAPI(title="simple", lifespan=lifespan)


@app.get("/hello")
async def hello(request: Request):
    return {"greeting": request.state.greeting}
"""


class Project:
    """A throwaway project inside pytester's folder: ini settings, modules and tests."""

    def __init__(self, pytester: pytest.Pytester, share: SubsessionShare | None = None) -> None:
        self.pytester = pytester
        self.share = share
        self.driver: str | None = None  # set by the db_driver fixture

    def ini(self, **settings: str) -> None:
        lines = ["[pytest]", "pythonpath = .", "asyncio_default_fixture_loop_scope = function"]
        if self.driver is not None and "testkit_database_driver" not in settings:
            lines.append(f"testkit_database_driver = {self.driver}")
        lines += [f"{name} = {value}" for name, value in settings.items()]
        self.pytester.makefile(".ini", pytest="\n".join(lines) + "\n")

    def module(self, name: str, source: str) -> None:
        self.pytester.makepyfile(**{name: textwrap.dedent(source)})

    def run(self, *args: str, autoload: bool = False, fresh: bool = False) -> pytest.RunResult:
        """Run pytest on the project in a fresh process; its result.

        Plugin autoloading is off (loading every installed plugin costs each sub-session
        more than some of its tests): the sub-session loads the kit and ``SUBSESSION_PLUGINS``
        by name. ``autoload=True`` runs it as installed (for the tests of loading by entry
        point); so does a test that set ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` itself, as it
        loads the kit its own way.

        Its embedded servers come from one cached cluster shared by the sub-sessions of
        this process (see ``SubsessionShare``), unless the test has a TMPDIR of its own
        (``private_tmpdir``): then pytest's cache provider is off, and the sub-session makes
        and deletes a throwaway cluster in that TMPDIR, for the test to check.

        With autoload off, the process is a fork of a process that has the heavy libraries
        imported already (see ``forked.py``); ``fresh=True`` starts a new interpreter instead,
        for the tests of what a run imports.
        """
        options, after = plugin_options(args, autoload=autoload)
        share = self.share
        isolated = share is None or os.environ.get("TMPDIR") != share.outer_tmpdir
        with pytest.MonkeyPatch.context() as env:
            if isolated:
                options += ["-p", "no:cacheprovider"]
            else:
                assert share is not None
                env.setenv("TMPDIR", str(share.tmpdir))
                options += ["-o", f"cache_dir={share.cache_dir}"]
            return run_subsession(self.pytester, [*options, *args, *after], fresh=fresh)


def pytest_configure(config: pytest.Config) -> None:
    # A shell's background job (or nohup) starts with SIGINT ignored, which every process
    # started from here would inherit: the Ctrl-C tests' runs would not stop. A handler of
    # Python's own is reset to the default across exec, so the sub-sessions get Python's.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Where PYTHONDONTWRITEBYTECODE is set (some CI images, this project's reference machine),
    # nothing writes the kit's bytecode (an editable install has none), so each of the
    # several hundred sub-sessions and their xdist workers would compile the kit from source
    # again. Compile it once, before the workers start.
    if sys.dont_write_bytecode and not hasattr(config, "workerinput"):
        import anyio_fastapi_testkit

        compileall.compile_dir(Path(anyio_fastapi_testkit.__file__).parent, quiet=1)


# ``KIT_TESTS_FORK=0`` runs every sub-session as a new interpreter (to compare, or to rule the
# forks out when a test fails).
FORK_SUBSESSIONS = os.environ.get("KIT_TESTS_FORK", "1") != "0"

# Loaded by name into the sub-sessions (autoload is off): by entry point name, as autoload
# registers them (the kit checks for pytest-asyncio as "asyncio"). pytest-asyncio is there
# because most of the kit's users have it installed beside the kit, and the project ini
# sets its option; xdist for ``-n`` (its workers get these options with the command line).
SUBSESSION_PLUGINS = ("anyio_fastapi_testkit.plugin", "asyncio", "xdist", "timeout")
# --disable-plugin-autoload, and -p by entry point name with autoload off, came with pytest
# 8.4: on older releases (.ci/lower-bounds) the sub-sessions load the plugins as installed.
_AUTOLOAD_FLAG = pytest.version_tuple >= (8, 4)
# `-p asyncio` names the entry point, but pytest first marks a module of that name (the
# standard library's, imported already) for assertion rewriting, and warns that it cannot.
_ASYNCIO_BY_NAME = (
    "ignore:Module already imported so cannot be rewritten; asyncio:"
    "pytest.PytestAssertRewriteWarning"
)


def plugin_options(args: Sequence[str], *, autoload: bool = False) -> tuple[list[str], list[str]]:
    """The options that go before and after ``args`` on a sub-session's command line: without
    pytest-randomly, and (unless ``autoload`` or the environment says otherwise) with plugin
    autoloading off and ``SUBSESSION_PLUGINS`` loaded by name."""
    options: list[str] = ["-p", "no:randomly"]
    after: list[str] = []
    if not autoload and _AUTOLOAD_FLAG and "PYTEST_DISABLE_PLUGIN_AUTOLOAD" not in os.environ:
        options.append("--disable-plugin-autoload")
        options += [
            arg for name in SUBSESSION_PLUGINS if f"no:{name}" not in args for arg in ("-p", name)
        ]
        # Last, to win over the test's own -W options (``-W error``, ``-W always``).
        after += ["-W", _ASYNCIO_BY_NAME]
    return options, after


def run_subsession(
    pytester: pytest.Pytester, args: Sequence[str], *, fresh: bool = False
) -> pytest.RunResult:
    """``pytest <args>`` in pytester's folder: a fork of the zygote (see ``forked.py``) when
    plugin autoload is off (by the flag or by ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``), else (or
    with ``fresh``) a new interpreter."""
    no_autoload = "--disable-plugin-autoload" in args or bool(
        os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    )
    if no_autoload and not fresh and FORK_SUBSESSIONS:
        result = run_forked(pytester, *args, timeout=SUBSESSION_TIMEOUT)
        if result is not None:
            return result
    return pytester.runpytest_subprocess(*args, timeout=SUBSESSION_TIMEOUT)


@dataclasses.dataclass(frozen=True)
class SubsessionShare:
    """What the sub-sessions of one outer pytest process share: a TMPDIR (the kit's base
    folder goes inside) and a pytest cache folder, so that the kit's cluster cache keeps one
    cluster (initdb once, then a start) for all of them. One per outer process (xdist
    worker): the cache's lock makes a concurrent second run use a throwaway cluster."""

    tmpdir: Path
    cache_dir: Path
    outer_tmpdir: str | None  # TMPDIR as the outer session found it


@pytest.fixture(scope="session")
def subsession_share() -> Iterator[SubsessionShare]:
    """The folders the sub-sessions of this process share; at the end, the cached cluster
    (and anything a killed sub-session left running there) is stopped and all deleted."""
    from anyio_fastapi_testkit._postgres.cache import stop_abandoned

    # Under /tmp and short: the server's unix socket goes inside the kit's base folder.
    folder = Path(tempfile.mkdtemp(prefix="tks-", dir="/tmp" if Path("/tmp").is_dir() else None))
    yield SubsessionShare(folder, folder / ".pytest_cache", os.environ.get("TMPDIR"))
    base = folder / f"anyio-fastapi-testkit-{os.getuid()}"
    if base.is_dir():
        with contextlib.suppress(Exception):
            stop_abandoned(base)  # the cached cluster's server, if a killed run left it up
    for process in postgres_processes_under(folder):
        with contextlib.suppress(psutil.Error):
            process.kill()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def project(pytester: pytest.Pytester, subsession_share: SubsessionShare) -> Project:
    """An empty project with the simple app module available as ``simple_app``."""
    proj = Project(pytester, subsession_share)
    proj.module("simple_app", SIMPLE_APP)
    return proj


DB_DRIVERS = ("psycopg", "asyncpg")


@pytest.fixture(params=DB_DRIVERS)
def db_driver(request: pytest.FixtureRequest, project: Project) -> str:
    """Runs the test once per async driver: the sub-session's ini gets
    ``testkit_database_driver``. For the tests whose outcome depends on the driver (how it
    reports errors, savepoints, prepared statements); use with ``usefixtures``."""
    driver: str = request.param
    project.driver = driver
    return driver


# --- database helpers (test_db_fixtures.py, test_db_errors.py) ----------------------------

from typing import Any  # noqa: E402

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from sqlalchemy.engine import URL  # noqa: E402

from anyio_fastapi_testkit._postgres.server import RunningServer, start_server  # noqa: E402

# A FastAPI app on SQLAlchemy 2 async models. Its own engine points at a closed port unless
# DATABASE_URL is set, so a request that is not routed to the test's session fails loudly.
ITEMS_APP = """
import os

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


SessionLocal = async_sessionmaker(class_=AsyncSession, expire_on_commit=False)
_engine = None


async def get_session():
    global _engine
    if _engine is None:
        url = os.environ.get("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/nowhere")
        _engine = create_async_engine(url)
        SessionLocal.configure(bind=_engine)
    async with SessionLocal() as session:
        yield session


async def unused_dependency():
    yield None


class ItemIn(BaseModel):
    name: str


class BatchIn(BaseModel):
    names: list[str]


app = FastAPI(title="items")


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.post("/items", status_code=201)
async def create_item(body: ItemIn, session: AsyncSession = Depends(get_session)):
    item = Item(name=body.name)
    session.add(item)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status_code=409, detail=f"{body.name} exists") from None
    return {"id": item.id, "name": item.name}


@app.get("/items")
async def list_items(session: AsyncSession = Depends(get_session)):
    return list(await session.scalars(select(Item.name).order_by(Item.name)))


@app.post("/items/batch")
async def create_batch(body: BatchIn, session: AsyncSession = Depends(get_session)):
    # Each name in its own savepoint: a duplicate is skipped, the others are kept.
    created, skipped = [], []
    for name in body.names:
        try:
            async with session.begin_nested():
                session.add(Item(name=name))
        except IntegrityError:
            skipped.append(name)
        else:
            created.append(name)
    await session.commit()
    return {"created": created, "skipped": skipped}
"""


def postgres_processes_under(folder: Path) -> list[psutil.Process]:
    """PostgreSQL processes whose command line or working directory lies in ``folder``."""
    found = []
    for process in psutil.process_iter(["name", "cmdline", "cwd", "status"]):
        info = process.info
        if not (info["name"] or "").startswith("postgres") or info["status"] == "zombie":
            continue
        places = [*(info["cmdline"] or []), info["cwd"] or ""]
        if any(place == str(folder) or f"{folder}{os.sep}" in place for place in places):
            found.append(process)
    return found


@pytest.fixture
def private_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short TMPDIR of its own for the sub-sessions: the kit's state folders go inside.

    The kit's default state folder is ``$TMPDIR/anyio-fastapi-testkit-<uid>``, so this keeps
    sub-sessions out of one another's way (and out of other runs' orphan cleanup), and makes
    "nothing left behind" checkable. Short, for the server's unix socket path.
    """
    folder = Path(tempfile.mkdtemp(prefix="tkt-", dir="/tmp" if Path("/tmp").is_dir() else None))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.delenv("TESTKIT_DATABASE_URL", raising=False)
    yield folder
    for process in postgres_processes_under(folder):
        with contextlib.suppress(psutil.Error):
            process.kill()
    shutil.rmtree(folder, ignore_errors=True)


# Seconds a server asked to stop may take to end. At the end of a run the kit asks its cached
# cluster's server for a fast shutdown and does not wait: the server ends on its own, after
# pytest has exited. Generous: only a server that never ends waits it out.
SERVER_END_WAIT = 30.0


def postgres_left_under(folder: Path, *, besides: Sequence[int] = ()) -> list[psutil.Process]:
    """The PostgreSQL processes in ``folder`` (but the pids ``besides``) that have not ended
    within ``SERVER_END_WAIT`` seconds."""
    deadline = time.monotonic() + SERVER_END_WAIT
    while True:
        found = [p for p in postgres_processes_under(folder) if p.pid not in besides]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def wait_for_server_end(folder: Path) -> None:
    """Wait until the server in ``folder`` (a cached cluster's) has ended, as the kit's next
    start would: a test that damages or copies the cluster after a run must not race the
    server's own shutdown. Fails if it is still running after ``SERVER_END_WAIT`` seconds."""
    __tracebackhide__ = True
    if postgres_left_under(folder):
        pytest.fail(f"the server in {folder} was still running {SERVER_END_WAIT} s after its run")


def leftovers(tmpdir: Path, *, besides: Sequence[int] = ()) -> list[str]:
    """Servers and state folders that a finished sub-session left in its private TMPDIR
    (servers given a moment to end, see ``SERVER_END_WAIT``; ``besides``: pids not counted)."""
    base = tmpdir / f"anyio-fastapi-testkit-{os.getuid()}"
    folders = sorted(path.name for path in base.glob("run-*")) if base.is_dir() else []
    processes = [
        f"pid {p.pid}: {' '.join(p.info['cmdline'] or [])}"
        for p in postgres_left_under(tmpdir, besides=besides)
    ]
    return folders + processes


def sql_rows(url: URL, statement: str | sql.Composable, database: str | None = None) -> list[Any]:
    """Run one statement with psycopg (autocommit) on ``url``'s server; its rows, if any."""
    target = url if database is None else url.set(database=database)
    with psycopg.connect(target.render_as_string(hide_password=False), autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


@contextlib.contextmanager
def lock_on_database(url: URL, name: str) -> Iterator[None]:
    """Hold the lock ``COMMENT ON DATABASE`` takes on database ``name`` (its comment set to
    what it is) in a transaction rolled back at the end: the kit's ``CREATE DATABASE ...
    TEMPLATE name`` and ``DROP DATABASE name`` wait for it; the database is left as it was."""
    with psycopg.connect(url.render_as_string(hide_password=False)) as conn:
        comment = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
        assert comment is not None, f"no database {name}"
        statement = sql.SQL("COMMENT ON DATABASE {} IS {}")
        conn.execute(statement.format(sql.Identifier(name), sql.Literal(comment[0])))
        try:
            yield
        finally:
            conn.rollback()


def database_names(url: URL) -> list[str]:
    return sorted(row[0] for row in sql_rows(url, "SELECT datname FROM pg_database"))


@pytest.fixture(scope="module")
def pg_server() -> Iterator[RunningServer]:
    """One embedded server for a test module, standing in for a developer's own server.

    Its state folder is not under pytest's basetemp: as root, every new pytest session (and
    these tests start many) resets /tmp/pytest-of-root to 0700, and the unprivileged server
    user could then no longer reach its data.
    """
    base = Path(tempfile.mkdtemp(prefix="tk-srv-"))
    server = start_server(None, base_dir=base)
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


def drop_by_hand(url: URL, name: str) -> None:
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    sql_rows(url, drop)


# --- shared checks (appended; see also scaffolding.py) ------------------------------------------


def assert_nothing_left(tmpdir: Path, *, besides: Sequence[Path] = ()) -> None:
    """Fail, naming each, if a sub-session left a server or a state folder in ``tmpdir``.

    ``besides``: folders whose servers may run on (a cached cluster another run is using).
    """
    __tracebackhide__ = True
    allowed = [process.pid for folder in besides for process in postgres_processes_under(folder)]
    left = leftovers(tmpdir, besides=allowed)
    if left:
        base = tmpdir / f"anyio-fastapi-testkit-{os.getuid()}"
        lines = "\n".join(f"  {item if item.startswith('pid ') else base / item}" for item in left)
        pytest.fail(
            f"the sub-session left {len(left)} thing(s) behind (a state folder of a run, or a "
            f"PostgreSQL process whose command line or working folder is in {tmpdir}):\n{lines}",
            pytrace=False,
        )


@pytest.fixture
def no_configured_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """No developer's TESTKIT_DATABASE_URL reaches the sub-sessions: the embedded server."""
    monkeypatch.delenv("TESTKIT_DATABASE_URL", raising=False)


def verdicts(result: pytest.RunResult) -> dict[str, list[str]]:
    """Each inner test's outcomes, by node id, from a ``-v`` sub-session's lines (for runs that
    check several inner tests by name)."""
    found: dict[str, list[str]] = {}
    for line in result.outlines:
        match = re.match(r"(\S+::.*?) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)( |$)", line)
        if match:
            found.setdefault(match[1], []).append(match[2])
    return found
