"""Helpers for the plugin's own tests: each runs a real pytest sub-session with pytester."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

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

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.driver: str | None = None  # set by the db_driver fixture

    def ini(self, **settings: str) -> None:
        lines = ["[pytest]", "pythonpath = .", "asyncio_default_fixture_loop_scope = function"]
        if self.driver is not None and "testkit_database_driver" not in settings:
            lines.append(f"testkit_database_driver = {self.driver}")
        lines += [f"{name} = {value}" for name, value in settings.items()]
        self.pytester.makefile(".ini", pytest="\n".join(lines) + "\n")

    def module(self, name: str, source: str) -> None:
        self.pytester.makepyfile(**{name: textwrap.dedent(source)})

    def run(self, *args: str) -> pytest.RunResult:
        return self.pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-p", "no:randomly", *args, timeout=SUBSESSION_TIMEOUT
        )


@pytest.fixture
def project(pytester: pytest.Pytester) -> Project:
    """An empty project with the simple app module available as ``simple_app``."""
    proj = Project(pytester)
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

import contextlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # noqa: E402
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


def leftovers(tmpdir: Path) -> list[str]:
    """Servers and state folders that a finished sub-session left in its private TMPDIR."""
    base = tmpdir / f"anyio-fastapi-testkit-{os.getuid()}"
    folders = sorted(path.name for path in base.glob("run-*")) if base.is_dir() else []
    processes = [
        f"pid {p.pid}: {' '.join(p.info['cmdline'] or [])}"
        for p in postgres_processes_under(tmpdir)
    ]
    return folders + processes


def sql_rows(url: URL, statement: str | sql.Composable, database: str | None = None) -> list[Any]:
    """Run one statement with psycopg (autocommit) on ``url``'s server; its rows, if any."""
    target = url if database is None else url.set(database=database)
    with psycopg.connect(target.render_as_string(hide_password=False), autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


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
