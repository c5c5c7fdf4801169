"""The client_factory fixture (several clients in one test) and the testkit_base_url setting."""

from __future__ import annotations

import textwrap

import pytest
from conftest import HTTP_LIBRARIES, Project
from scaffolding import items_on_the_tests_transaction

import anyio_fastapi_testkit
from anyio_fastapi_testkit._core.config import _base_url
from anyio_fastapi_testkit._core.errors import ConfigError
from anyio_fastapi_testkit._http.client import ClientFactory

ECHO_APP = """
from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/login")
async def login(response: Response):
    response.set_cookie("session", "abc")
    return {}


@app.get("/{path:path}")
async def echo(request: Request, path: str):
    return {
        "path": path,
        "url": str(request.url),
        "authorization": request.headers.get("authorization"),
        "cookie": request.cookies.get("session"),
    }
"""

TRUSTED_HOST_APP = """
from fastapi import FastAPI, Request
from starlette.middleware.trustedhost import TrustedHostMiddleware

app = FastAPI()
app.add_middleware(TrustedHostMiddleware, allowed_hosts=["api.example.com"])


@app.get("/ping")
async def ping(request: Request):
    return {"host": request.headers["host"]}
"""

# The last test of a sub-session that needs no database: none was started.
NO_DATABASE = """

def test_zz_no_database_was_started(request):
    from anyio_fastapi_testkit._provisioning.run_databases import test_databases

    assert not test_databases(request.config).ready
"""


def write_tests(project: Project, name: str, source: str, *, no_database: bool) -> None:
    """A test module; with ``no_database`` its last test checks that no database was started."""
    project.module(name, textwrap.dedent(source) + (NO_DATABASE if no_database else ""))


def test_the_factory_type_is_public() -> None:
    assert anyio_fastapi_testkit.ClientFactory is ClientFactory
    assert "ClientFactory" in anyio_fastapi_testkit.__all__


@pytest.mark.parametrize("library", HTTP_LIBRARIES)
def test_two_clients_with_their_own_headers_and_cookies_all_closed_after_the_test(
    project: Project, library: str
) -> None:
    project.ini(
        testkit_app="echo_app:app", testkit_http_client=library, testkit_backends="asyncio trio"
    )
    project.module("echo_app", ECHO_APP)
    write_tests(
        project,
        "test_factory",
        f"""
        import pytest
        import {library}

        from anyio_fastapi_testkit import ClientFactory

        made = []  # every client of the test, with where it came from


        @pytest.fixture
        def anonymous(client_factory):
            made.append(client_factory())
            return made[-1]


        @pytest.fixture
        def anonymous_too(client_factory):
            made.append(client_factory())
            return made[-1]


        @pytest.fixture
        def admin(client_factory):
            made.append(client_factory(headers={{"Authorization": "Bearer admin"}}))
            return made[-1]


        async def test_1_clients(client_factory, anonymous, anonymous_too, admin, client):
            made.append(client)
            mine = made[-4:]
            assert mine == [anonymous, anonymous_too, admin, client]
            assert isinstance(client_factory, ClientFactory)
            assert len({{id(c) for c in mine}}) == 4  # each call a new client; client too
            assert all(isinstance(c, {library}.AsyncClient) for c in mine)
            assert all(type(c) is type(client) for c in mine)
            assert all(str(c.base_url) == "http://testserver" for c in mine)
            whoami = [(await c.get("/whoami")).json() for c in mine]
            assert [w["authorization"] for w in whoami] == [None, None, "Bearer admin", None]
            assert {{w["url"] for w in whoami}} == {{"http://testserver/whoami"}}
            await admin.post("/login")
            assert (await admin.get("/me")).json()["cookie"] == "abc"
            assert (await anonymous.get("/me")).json()["cookie"] is None
            assert (await client.get("/me")).json()["cookie"] is None
            assert not any(c.is_closed for c in mine)


        def test_2_every_client_was_closed_after_the_test():
            assert len(made) == 8  # two backends
            assert all(c.is_closed for c in made)
        """,
        no_database=True,
    )
    project.run().assert_outcomes(passed=4)  # the sync tests run once


def test_clients_stay_open_for_the_teardown_of_the_tests_own_fixtures(project: Project) -> None:
    project.ini(testkit_app="echo_app:app")
    project.module("echo_app", ECHO_APP)
    write_tests(
        project,
        "test_teardown",
        """
        import pytest

        closed_at_teardown = []
        made = []


        @pytest.fixture
        async def admin(client_factory):
            admin = client_factory(headers={"Authorization": "Bearer admin"})
            made.append(admin)
            yield admin
            closed_at_teardown.append(admin.is_closed)
            assert (await admin.get("/bye")).json()["authorization"] == "Bearer admin"


        async def test_async(admin):
            assert (await admin.get("/hi")).json()["path"] == "hi"


        def test_sync(client_factory):
            made.append(client_factory())
            assert not made[-1].is_closed


        def test_z_closed_afterwards():
            assert closed_at_teardown == [False]
            assert len(made) == 2 and all(c.is_closed for c in made)
        """,
        no_database=True,
    )
    project.run("-p", "no:randomly").assert_outcomes(passed=4)


def test_base_url_option_and_setting(project: Project) -> None:
    project.ini(testkit_app="echo_app:app", testkit_base_url="http://testserver/api")
    project.module("echo_app", ECHO_APP)
    write_tests(
        project,
        "test_base_url",
        """
        async def test_setting_is_the_default(client, client_factory):
            other = client_factory()
            for c in (client, other):
                assert str(c.base_url) == "http://testserver/api/"
                answer = (await c.get("/items")).json()
                assert answer["url"] == "http://testserver/api/items"
                assert answer["path"] == "api/items"


        async def test_option_overrides_it(client, client_factory):
            other = client_factory(base_url="http://other.example/v1")
            assert (await other.get("items")).json()["url"] == "http://other.example/v1/items"
            assert (await client.get("items")).json()["url"] == "http://testserver/api/items"
        """,
        no_database=True,
    )
    project.run().assert_outcomes(passed=3)


@pytest.mark.parametrize(("base_url", "status"), [(None, 400), ("http://api.example.com", 200)])
def test_trusted_host_middleware_needs_the_base_url_setting(
    project: Project, base_url: str | None, status: int
) -> None:
    settings = {"testkit_app": "trusted_app:app"}
    if base_url is not None:
        settings["testkit_base_url"] = base_url
    project.ini(**settings)
    project.module("trusted_app", TRUSTED_HOST_APP)
    project.module(
        "test_trusted",
        f"""
        async def test_hosts(client, client_factory):
            for c in (client, client_factory(headers={{"Authorization": "x"}})):
                response = await c.get("/ping")
                assert response.status_code == {status}, response.text
                if response.status_code == 200:
                    assert response.json() == {{"host": "api.example.com"}}
            # An explicit base_url wins over the setting.
            wrong = client_factory(base_url="http://testserver")
            assert (await wrong.get("/ping")).status_code == 400
        """,
    )
    project.run().assert_outcomes(passed=1)


BAD_BASE_URLS = ["api.example.com", "ftp://api.example.com", "http://", "http://api example.com"]


def test_a_bad_base_url_is_one_clear_error(project: Project) -> None:
    # One sub-session shows how the error reaches the user; the other values' messages are
    # checked in-process (test_each_bad_base_url_gets_the_message), as the path is the same.
    value = "/api"
    project.ini(testkit_app="echo_app:app", testkit_base_url=value)
    project.module("echo_app", ECHO_APP)
    project.module("test_any", "async def test_one(client):\n    pass\n")
    result = project.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    message = f"testkit_base_url = {value!r} is not an absolute http or https URL"
    assert output.count(message) == 1, output
    assert "e.g. http://api.example.com" in output
    assert "Traceback" not in output
    assert "test_one" not in output


@pytest.mark.parametrize("value", BAD_BASE_URLS)
def test_each_bad_base_url_gets_the_message(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        _base_url(value)
    message = str(error.value)
    assert message.count(f"testkit_base_url = {value!r} is not an absolute http or https URL") == 1
    assert "e.g. http://api.example.com" in message


@pytest.mark.parametrize(
    "value",
    ["http://testserver", "https://api.example.com", "http://testserver/api", "http://[::1]:8000"],
)
def test_good_base_urls_pass_as_written(value: str) -> None:
    assert _base_url(value) == value
    assert _base_url(None) == "http://testserver"


@pytest.mark.parametrize("value", ["http://host:port", "http://host:99999", "mailto:a@b.c"])
def test_more_bad_base_urls(value: str) -> None:
    with pytest.raises(ConfigError, match="testkit_base_url"):
        _base_url(value)


def test_clients_of_the_factory_share_the_tests_transaction(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    items_on_the_tests_transaction(project, monkeypatch)
    project.module(
        "test_shared",
        """
        from sqlalchemy import select

        from items_app import Item


        async def test_a_both_clients_see_the_same_rows(client, client_factory, db_session):
            other = client_factory(headers={"Authorization": "Bearer other"})
            assert (await client.post("/items", json={"name": "by-client"})).status_code == 201
            assert (await other.get("/items")).json() == ["by-client"]
            assert (await other.post("/items", json={"name": "by-other"})).status_code == 201
            assert (await client.get("/items")).json() == ["by-client", "by-other"]
            names = await db_session.scalars(select(Item.name).order_by(Item.name))
            assert list(names) == ["by-client", "by-other"]


        async def test_b_rolled_back(client_factory):
            assert (await client_factory().get("/items")).json() == []
        """,
    )
    project.run("-p", "no:randomly").assert_outcomes(passed=2)
