"""The app under test behaves as in production: each request gets a session of its own on the
test's connection and transaction (unless ``testkit_share_session``), and time moves between
tests (``now()`` is the start of the transaction, which the kit begins anew for every test)."""

from __future__ import annotations

import re

import pytest
from conftest import ITEMS_APP, Project

# A shop built on conftest.ITEMS_APP (its Base, SessionLocal, and get_session, whose engine
# points at a closed port: a request not routed to the test's transaction fails loudly).
# Endpoints report what the app's session loaded, and which session.
SHOP_APP = (
    ITEMS_APP
    + """
from datetime import datetime
from decimal import Decimal

import anyio
from fastapi import BackgroundTasks
from sqlalchemy import DateTime, Numeric, func


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2), default=Decimal("0.00"))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class ProductIn(BaseModel):
    name: str
    price: str = "0.00"


@app.post("/products", status_code=201)
async def create_product(body: ProductIn, session: AsyncSession = Depends(get_session)):
    product = Product(name=body.name, price=Decimal(body.price))
    session.add(product)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status_code=409, detail=f"{body.name} exists") from None
    await session.refresh(product)
    return {"id": product.id, "created_at": product.created_at.isoformat()}


@app.get("/products")
async def list_products(session: AsyncSession = Depends(get_session)):
    return list(await session.scalars(select(Product.name).order_by(Product.name)))


@app.get("/products/{name}")
async def get_product(name: str, session: AsyncSession = Depends(get_session)):
    product = await session.scalar(select(Product).where(Product.name == name))
    if product is None:
        raise HTTPException(status_code=404)
    # How many requests this session object has served.
    session.info["requests"] = session.info.get("requests", 0) + 1
    await anyio.sleep(0.01)  # let a concurrent request in
    return {
        "price_type": type(product.price).__name__,
        "price": str(product.price),
        "session": id(session),
        "requests": session.info["requests"],
    }


async def add_product(name):
    # A job in a session of its own (testkit_sessionmaker joins it to the test's transaction).
    async with SessionLocal() as session:
        session.add(Product(name=name))
        await session.commit()


@app.post("/products/{name}/later", status_code=202)
async def add_later(name: str, jobs: BackgroundTasks, session: AsyncSession = Depends(get_session)):
    await session.scalar(select(func.count(Product.id)))  # the request's session only reads
    jobs.add_task(add_product, name)
    return {}


@app.post("/products/{name}/uncommitted")
async def add_uncommitted(name: str, session: AsyncSession = Depends(get_session)):
    session.add(Product(name=name))
    await session.flush()  # never committed: production discards it
    return {}
"""
)

SHOP_SETTINGS = {
    "testkit_app": "shop_app:app",
    "testkit_schema": "shop_app:Base.metadata",
    "testkit_session_dependency": "shop_app:get_session",
}


def shop_project(project: Project, **settings: str) -> Project:
    project.module("shop_app", SHOP_APP)
    project.ini(**{**SHOP_SETTINGS, **settings})
    return project


REQUEST_TESTS = """
import anyio
from sqlalchemy import func, select

from shop_app import Product


async def test_a_numeric_set_as_str_reaches_the_app_as_decimal(client, db_session):
    # Held: the session's identity map holds flushed objects by weak reference only.
    pen = Product(name="pen", price="4.00")
    db_session.add(pen)
    await db_session.flush()
    body = (await client.get("/products/pen")).json()
    assert body["price_type"] == "Decimal", body
    assert body["price"] == "4.00"
    assert body["session"] != id(db_session)


async def test_the_apps_rollback_keeps_what_the_test_flushed(client, db_session):
    db_session.add_all([Product(name="pen", price="1.00"), Product(name="ink", price="2.00")])
    await db_session.flush()
    conflict = await client.post("/products", json={"name": "pen"})
    assert conflict.status_code == 409, conflict.text
    assert await db_session.scalar(select(func.count(Product.id))) == 2
    assert (await client.get("/products")).json() == ["ink", "pen"]
    # Both sessions go on working.
    assert (await client.post("/products", json={"name": "cap"})).status_code == 201
    db_session.add(Product(name="nib"))
    await db_session.commit()
    assert (await client.get("/products")).json() == ["cap", "ink", "nib", "pen"]


async def test_rows_added_without_a_flush_reach_the_app(client, db_session):
    pending = Product(name="pending", price="4.00")
    db_session.add(pending)
    body = (await client.get("/products/pending")).json()
    assert body["price_type"] == "Decimal", body
    assert (await client.get("/products")).json() == ["pending"]


async def test_each_request_gets_a_new_session(client, db_session):
    pen = Product(name="pen")
    db_session.add(pen)
    first = (await client.get("/products/pen")).json()
    second = (await client.get("/products/pen")).json()
    assert (first["requests"], second["requests"]) == (1, 1)


async def test_concurrent_requests(client, db_session):
    pen = Product(name="pen", price="4.00")
    db_session.add(pen)
    await db_session.flush()
    reads, writes = [], []

    async def read():
        reads.append(await client.get("/products/pen"))

    async def write(n):
        writes.append(await client.post("/products", json={"name": f"new-{n}"}))

    async with anyio.create_task_group() as tg:
        for n in range(2):
            tg.start_soon(read)
            tg.start_soon(write, n)

    assert [r.status_code for r in writes] == [201, 201], [r.text for r in writes]
    assert [r.status_code for r in reads] == [200, 200], [r.text for r in reads]
    assert [(r.json()["price_type"], r.json()["requests"]) for r in reads] == [("Decimal", 1)] * 2
    assert (await client.get("/products")).json() == ["new-0", "new-1", "pen"]


async def test_next_test_is_clean(client, db_session):
    assert (await client.get("/products")).json() == []
    assert await db_session.scalar(select(func.count(Product.id))) == 0
"""


JOB_TESTS = """
async def test_a_job_that_commits_after_a_request_that_read(client):
    assert (await client.post("/products/late/later")).status_code == 202
    assert (await client.get("/products")).json() == ["late"]


async def test_a_request_that_never_commits_leaves_nothing(client, db_session):
    assert (await client.post("/products/draft/uncommitted")).status_code == 200
    assert (await client.get("/products")).json() == []
"""


@pytest.mark.usefixtures("db_driver")
def test_closing_a_request_session_undoes_only_its_own_work(project: Project) -> None:
    # A request's session is closed after the response, after its background tasks: one that
    # only read releases its savepoint, keeping what a job committed on top of it; one that
    # wrote without committing is rolled back, as in production.
    shop_project(project, testkit_sessionmaker="shop_app:SessionLocal")
    project.module("test_jobs", JOB_TESTS)
    project.run("-v").assert_outcomes(passed=2)


SHARED_TESTS = """
from shop_app import Product


async def test_the_app_gets_the_tests_own_session(client, db_session):
    pen = Product(name="pen", price="4.00")  # held: the identity map's references are weak
    db_session.add(pen)
    await db_session.flush()
    body = (await client.get("/products/pen")).json()
    assert (body["price_type"], body["price"]) == ("str", "4.00")
    assert body["session"] == id(db_session)


async def test_the_apps_rollback_undoes_what_the_test_flushed(client, db_session):
    db_session.add(Product(name="pen"))
    await db_session.flush()
    assert (await client.post("/products", json={"name": "pen"})).status_code == 409
    assert (await client.get("/products")).json() == []
"""


def test_share_session_keeps_the_shared_session_recipe(project: Project) -> None:
    shop_project(project, testkit_share_session="true")
    project.module("test_shared", SHARED_TESTS)
    project.run("-v", "--strict-config").assert_outcomes(passed=2)


TIME_TESTS = """
import time
from datetime import datetime, timedelta

from sqlalchemy import func, select

from anyio_fastapi_testkit._isolation import database
from shop_app import Product

SEEN = {}
NOW = select(func.now())
# The kit begins the transaction anew before a test when it is older than FRESH_FOR seconds
# (tests that do not use the database in between): set smaller here, where the kit reads it,
# so that the pauses between tests that pass it can be short.
database.FRESH_FOR = 0.2
PAUSE = 0.3  # seconds of real time between two tests, longer than FRESH_FOR


async def created(db_session, name):
    return await db_session.scalar(select(Product.created_at).where(Product.name == name))


async def test_1_records_the_time(client, db_session):
    SEEN["now"] = await db_session.scalar(NOW)
    assert (await client.post("/products", json={"name": "by-app"})).status_code == 201
    db_session.add(Product(name="by-test"))
    await db_session.flush()
    SEEN["by-app"] = await created(db_session, "by-app")
    SEEN["by-test"] = await created(db_session, "by-test")
    assert SEEN["by-app"] == SEEN["by-test"] == SEEN["now"]  # one transaction per test


async def test_2_time_moved(client, db_session):
    now = await db_session.scalar(NOW)
    assert now > SEEN["now"]
    assert (await client.post("/products", json={"name": "by-app"})).status_code == 201
    db_session.add(Product(name="by-test"))
    await db_session.flush()
    assert await created(db_session, "by-app") > SEEN["by-app"]
    assert await created(db_session, "by-test") > SEEN["by-test"]
    SEEN["now"] = now


def test_3_takes_a_while_without_the_database():
    time.sleep(PAUSE)


async def test_4_time_is_as_of_the_tests_start(db_connection):
    now = await db_connection.scalar(NOW)
    assert now - SEEN["now"] >= timedelta(seconds=PAUSE), (now, SEEN["now"])
    SEEN["now"] = now


def test_5_takes_a_while_without_the_database():
    time.sleep(PAUSE)


async def test_6_also_when_only_the_app_uses_the_database(client):
    response = await client.post("/products", json={"name": "late"})
    created_at = datetime.fromisoformat(response.json()["created_at"])
    assert created_at - SEEN["now"] >= timedelta(seconds=PAUSE), (created_at, SEEN["now"])
"""


@pytest.mark.usefixtures("db_driver")
def test_each_request_gets_a_session_of_its_own_and_time_moves_between_tests(
    project: Project,
) -> None:
    # One sub-session (one project setup) for both sets of tests, in one module: pytest would
    # move the sync tests of a second module away, to after the other module's async tests.
    shop_project(project)
    project.module("test_requests", REQUEST_TESTS + TIME_TESTS)
    result = project.run("-v")
    result.assert_outcomes(passed=12)
    inner = re.findall(r"^(?:async )?def (test_\w+)", REQUEST_TESTS + TIME_TESTS, re.MULTILINE)
    assert len(inner) == 12
    result.stdout.fnmatch_lines([f"test_requests.py::{name} PASSED*" for name in inner])


SYNC_SHOP_APP = """
import os

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import create_engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shop_app import Product, ProductIn

SessionLocal = sessionmaker(expire_on_commit=False)
_engine = None


def get_sync_session():
    global _engine
    if _engine is None:
        url = os.environ.get("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/nowhere")
        _engine = create_engine(url)
        SessionLocal.configure(bind=_engine)
    with SessionLocal() as session:
        yield session


app = FastAPI(title="sync shop")


@app.post("/products", status_code=201)
def create_product(body: ProductIn, session: Session = Depends(get_sync_session)):
    session.add(Product(name=body.name))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(status_code=409, detail=f"{body.name} exists") from None
    return {}


@app.get("/products")
def list_products(session: Session = Depends(get_sync_session)):
    return list(session.scalars(select(Product.name).order_by(Product.name)))


@app.get("/products/{name}")
def get_product(name: str, session: Session = Depends(get_sync_session)):
    product = session.scalar(select(Product).where(Product.name == name))
    return {"price_type": type(product.price).__name__, "session": id(session)}
"""

SYNC_TESTS = """
from shop_app import Product

SHARED = SHARE


async def test_the_app_loads_from_the_database(client, db_session_sync):
    pen = Product(name="pen", price="4.00")  # not flushed; held (weak identity map)
    db_session_sync.add(pen)
    body = (await client.get("/products/pen")).json()
    if SHARED:
        assert body == {"price_type": "str", "session": id(db_session_sync)}
    else:
        assert body["price_type"] == "Decimal" and body["session"] != id(db_session_sync)


async def test_the_apps_rollback(client, db_session_sync):
    db_session_sync.add(Product(name="pen"))
    db_session_sync.flush()
    assert (await client.post("/products", json={"name": "pen"})).status_code == 409
    expected = [] if SHARED else ["pen"]
    assert (await client.get("/products")).json() == expected
"""


@pytest.mark.parametrize("share", [False, True])
def test_sync_dependencies_follow_the_same_rule(project: Project, share: bool) -> None:
    shop_project(
        project,
        testkit_app="sync_shop_app:app",
        testkit_session_dependency="sync_shop_app:get_sync_session",
        testkit_share_session=str(share).lower(),
    )
    project.module("sync_shop_app", SYNC_SHOP_APP)
    project.module("test_sync", SYNC_TESTS.replace("SHARE", str(share)))
    project.run("-v", "--strict-config").assert_outcomes(passed=2)


def test_share_session_is_documented_in_help(project: Project) -> None:
    project.ini()
    result = project.run("--help")
    result.stdout.fnmatch_lines(["*testkit_share_session (bool):*"])
