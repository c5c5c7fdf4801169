"""The client fixture (httpx and httpx2) and the dependency overrides helper."""

from __future__ import annotations

import pytest

from conftest import Project

COOKIE_APP = """
from fastapi import Depends, FastAPI, Request, Response

app = FastAPI()


def current_user() -> str:
    return "real user"


@app.post("/login")
async def login(response: Response):
    response.set_cookie("session", "abc")
    return {}


@app.get("/me")
async def me(request: Request, user: str = Depends(current_user)):
    return {"cookie": request.cookies.get("session"), "user": user}
"""


@pytest.mark.parametrize("library", ["httpx", "httpx2"])
def test_client_library_and_isolation(project: Project, library: str) -> None:
    project.ini(testkit_app="cookie_app:app", testkit_http_client=library,
                testkit_backends="asyncio trio")
    project.module("cookie_app", COOKIE_APP)
    project.module(
        "test_cookies",
        f"""
        import {library}

        async def test_a_logs_in(client):
            assert isinstance(client, {library}.AsyncClient)
            assert str(client.base_url) == "http://testserver"
            await client.post("/login")
            assert (await client.get("/me")).json()["cookie"] == "abc"
            client.headers["x-leak"] = "yes"

        async def test_b_starts_clean(client):
            assert (await client.get("/me")).json()["cookie"] is None
            assert "x-leak" not in client.headers
        """,
    )
    project.run("-p", "no:randomly").assert_outcomes(passed=4)


def test_httpx2_is_preferred_when_installed(project: Project) -> None:
    project.ini(testkit_app="cookie_app:app")
    project.module("cookie_app", COOKIE_APP)
    project.module(
        "test_which",
        """
        import httpx2

        async def test_which(client):
            assert isinstance(client, httpx2.AsyncClient)
        """,
    )
    project.run().assert_outcomes(passed=1)


def test_unknown_http_client_setting(project: Project) -> None:
    project.ini(testkit_app="cookie_app:app", testkit_http_client="requests")
    project.module("cookie_app", COOKIE_APP)
    project.module("test_any", "async def test_one(client):\n    pass\n")
    result = project.run()
    result.stdout.fnmatch_lines(["*testkit_http_client = 'requests' is not supported*"])


def test_dependency_overrides_are_restored_even_after_failure(project: Project) -> None:
    project.ini(testkit_app="cookie_app:app")
    project.module("cookie_app", COOKIE_APP)
    project.module(
        "test_overrides",
        """
        import cookie_app
        from anyio_fastapi_testkit import override_dependencies

        async def test_1_overrides_and_fails(client, dependency_overrides):
            dependency_overrides[cookie_app.current_user] = lambda: "fake user"
            assert (await client.get("/me")).json()["user"] == "fake user"
            raise AssertionError("boom")

        async def test_2_sees_the_real_dependency(client, app):
            assert app.dependency_overrides == {}
            assert (await client.get("/me")).json()["user"] == "real user"

        async def test_3_context_manager_restores_previous_state(client, app):
            app.dependency_overrides[cookie_app.current_user] = lambda: "outer"
            try:
                with override_dependencies(app, {cookie_app.current_user: lambda: "inner"}):
                    assert (await client.get("/me")).json()["user"] == "inner"
                assert (await client.get("/me")).json()["user"] == "outer"
            finally:
                app.dependency_overrides.clear()
        """,
    )
    result = project.run("-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: boom*"])


def test_sync_test_can_use_the_async_client_fixture(project: Project) -> None:
    # The kit's async fixtures depend on anyio_backend, so a sync test may request them.
    project.ini(testkit_app="cookie_app:app")
    project.module("cookie_app", COOKIE_APP)
    project.module(
        "test_sync",
        """
        def test_sync(client):
            assert str(client.base_url) == "http://testserver"
        """,
    )
    project.run().assert_outcomes(passed=1)
