"""A sub-folder's conftest.py that overrides ``app``: its tests' requests go through the test's
transaction on that app, while the other folders' tests keep the default app."""

from __future__ import annotations

import pytest
from conftest import ITEMS_APP, Project

ITEMS_SETTINGS = {
    "testkit_app": "items_app:app",
    "testkit_schema": "items_app:Base.metadata",
    "testkit_session_dependency": "items_app:get_session",
}

# A second app, built from the same routes and the same session dependency, under /admin: a
# request for /admin/... reaches it and no other.
ADMIN_CONFTEST = """
import pytest
from fastapi import FastAPI

from items_app import app as items_app

admin_app = FastAPI(title="admin")
admin_app.include_router(items_app.router, prefix="/admin")


@pytest.fixture(scope="session")
def app():
    return admin_app
"""

# The same tests in each folder, on the folder's app (PREFIX): the app's requests and the
# test's db_session see each other's rows both ways, and each test starts from an empty table.
FOLDER_TESTS = """
from sqlalchemy import select

from items_app import Item


async def names(session):
    return list(await session.scalars(select(Item.name).order_by(Item.name)))


async def test_the_test_writes_and_the_app_reads(client, db_session, app):
    assert app.title == "TITLE"
    db_session.add(Item(name="from-test"))
    await db_session.commit()
    assert (await client.get("PREFIX/items")).json() == ["from-test"]


async def test_the_app_writes_and_the_test_reads(client, db_session):
    assert (await client.post("PREFIX/items", json={"name": "from-app"})).status_code == 201
    assert await names(db_session) == ["from-app"]
    assert (await client.get("PREFIX/items")).json() == ["from-app"]
"""


def folder_tests(title: str, prefix: str) -> str:
    return FOLDER_TESTS.replace("TITLE", title).replace("PREFIX", prefix)


# An app of the folder's own whose routes do not use the session dependency.
UNRELATED_CONFTEST = """
import pytest
from fastapi import FastAPI

other_app = FastAPI(title="other")


@other_app.get("/ping")
async def ping():
    return "pong"


@pytest.fixture(scope="session")
def app():
    return other_app
"""


def test_a_sub_conftest_app_gets_the_session_override_or_is_checked_to_use_it(
    project: Project,
) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(**ITEMS_SETTINGS)
    # Run in this order: the default app, the folder's own app, the default app again, so that
    # whichever app is looked up first, a later folder needs the other one. Last, a folder
    # whose app does not use the session dependency: its test gets the error, the others pass.
    project.module("a_default/test_a_default", folder_tests("items", ""))
    project.module("b_admin/conftest", ADMIN_CONFTEST)
    project.module("b_admin/test_b_admin", folder_tests("admin", "/admin"))
    project.module("c_default/test_c_default", folder_tests("items", ""))
    project.module("d_other/conftest", UNRELATED_CONFTEST)
    project.module(
        "d_other/test_d_other",
        """
        async def test_ping(client):
            assert (await client.get("/ping")).json() == "pong"
        """,
    )
    result = project.run("-v")
    result.stdout.fnmatch_lines(
        [
            "a_default/test_a_default.py::test_the_test_writes_and_the_app_reads PASSED*",
            "a_default/test_a_default.py::test_the_app_writes_and_the_test_reads PASSED*",
            "b_admin/test_b_admin.py::test_the_test_writes_and_the_app_reads PASSED*",
            "b_admin/test_b_admin.py::test_the_app_writes_and_the_test_reads PASSED*",
            "c_default/test_c_default.py::test_the_test_writes_and_the_app_reads PASSED*",
            "c_default/test_c_default.py::test_the_app_writes_and_the_test_reads PASSED*",
            "d_other/test_d_other.py::test_ping ERROR*",
            "*testkit_session_dependency = 'items_app:get_session' is not a dependency of any "
            "route of the app*",
        ]
    )
    result.assert_outcomes(passed=6, errors=1)


def test_each_app_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi import Depends, FastAPI

    from anyio_fastapi_testkit import fixtures

    async def get_session() -> object:
        return object()

    def make_app() -> FastAPI:
        made = FastAPI()

        @made.get("/")
        async def root(session: object = Depends(get_session)) -> None:
            pass

        return made

    checked: list[object] = []
    from anyio_fastapi_testkit._http import app as http_app

    check = http_app.check_uses_dependency

    def counting_check(app: object, dependency: object, path: str) -> None:
        checked.append(app)
        check(app, dependency, path)

    monkeypatch.setattr(http_app, "check_uses_dependency", counting_check)

    class Request:  # what the bindings ask of pytest's request: the test's `app`
        def __init__(self, app: FastAPI) -> None:
            self.app = app

        def getfixturevalue(self, name: str) -> FastAPI:
            assert name == "app"
            return self.app

    bindings = fixtures._AppBindings(None, {}, get_session, "pkg.db:get_session", [])
    first, second = make_app(), make_app()
    for app in (first, first, second, first, second):
        assert bindings.app(Request(app)) is app  # type: ignore[arg-type]
    assert checked == [first, second]


# A second app with a lifespan of its own, which records its startups and shutdowns.
LIFESPAN_CONFTEST = """
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI, Request

EVENTS = Path(__file__).parent.parent / "admin-events.txt"


@asynccontextmanager
async def lifespan(app):
    with EVENTS.open("a") as events:
        events.write("startup\\n")
    yield {"greeting": "admin"}
    with EVENTS.open("a") as events:
        events.write("shutdown\\n")


admin_app = FastAPI(title="admin", lifespan=lifespan)


@admin_app.get("/hello")
async def hello(request: Request):
    return {"greeting": request.state.greeting}


@pytest.fixture(scope="session")
def app():
    return admin_app
"""


def greeting_test(expected: str) -> str:
    return f"""
    async def test_hello(client, client_factory):
        assert (await client.get("/hello")).json() == {{"greeting": "{expected}"}}
        assert (await client_factory().get("/hello")).json() == {{"greeting": "{expected}"}}
    """


def test_a_sub_conftest_app_is_started_once_per_backend(project: Project) -> None:
    project.ini(testkit_app="simple_app:app", testkit_backends="asyncio trio")
    project.module("a_default/test_a_default", greeting_test("hello"))
    project.module("b_admin/conftest", LIFESPAN_CONFTEST)
    project.module("b_admin/test_b_admin", greeting_test("admin"))
    project.module("b_admin/test_b_admin_again", greeting_test("admin"))
    project.module("c_default/test_c_default", greeting_test("hello"))
    project.run("-v").assert_outcomes(passed=8)
    events = (project.pytester.path / "admin-events.txt").read_text().split()
    assert events == ["startup", "shutdown"] * 2


FAILING_CONFTEST = """
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI


@asynccontextmanager
async def lifespan(app):
    raise ConnectionRefusedError("admin cache at redis://cache:6379 is down")
    yield


@pytest.fixture(scope="session")
def app():
    return FastAPI(title="admin", lifespan=lifespan)
"""


def test_a_sub_conftest_apps_failing_startup_stops_the_session(project: Project) -> None:
    project.ini(testkit_app="simple_app:app")
    project.module("a_default/test_a_default", greeting_test("hello"))
    project.module("b_admin/conftest", FAILING_CONFTEST)
    project.module(
        "b_admin/test_b_admin",
        greeting_test("admin") + greeting_test("admin").replace("test_hello", "test_again"),
    )
    result = project.run("-v")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*AppError: The lifespan startup of the app (FastAPI 'admin') raised "
            "ConnectionRefusedError: admin cache at redis://cache:6379 is down*",
            "*the session stops here (1 more test not run)*",
        ]
    )
