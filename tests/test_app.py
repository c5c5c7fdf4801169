"""The app fixture and its lifespan: loading, state, once per backend, failures and timeouts."""

from __future__ import annotations

import pytest
from conftest import Project


def test_lifespan_runs_once_per_backend_and_state_reaches_requests(project: Project) -> None:
    project.ini(testkit_app="simple_app:app", testkit_backends="asyncio trio")
    project.module(
        "test_lifespan",
        """
        import pytest
        import simple_app

        @pytest.mark.parametrize("n", range(3))
        async def test_hello(client, n):
            response = await client.get("/hello")
            assert response.json() == {"greeting": "hello"}

        def test_zz_events():
            # Runs after the async tests: one full lifespan per backend (the second shutdown
            # happens at session end).
            assert simple_app.events.count("startup") == 2
            assert simple_app.events.count("shutdown") >= 1
        """,
    )
    result = project.run("-p", "no:randomly")
    result.assert_outcomes(passed=7)


def test_state_is_copied_per_request(project: Project) -> None:
    project.ini(testkit_app="state_app:app")
    project.module(
        "state_app",
        """
        from contextlib import asynccontextmanager
        from fastapi import FastAPI, Request

        @asynccontextmanager
        async def lifespan(app):
            yield {"counter": 0, "shared": []}

        app = FastAPI(lifespan=lifespan)

        @app.post("/bump")
        async def bump(request: Request):
            request.state.counter += 1   # rebinding stays in this request's copy
            request.state.shared.append(1)  # mutating a shared object is visible, as in servers
            return {"counter": request.state.counter, "shared": len(request.state.shared)}
        """,
    )
    project.module(
        "test_state",
        """
        async def test_bumps(client):
            assert (await client.post("/bump")).json() == {"counter": 1, "shared": 1}
            assert (await client.post("/bump")).json() == {"counter": 1, "shared": 2}
        """,
    )
    project.run().assert_outcomes(passed=1)


def test_factory_app_path(project: Project) -> None:
    project.ini(testkit_app="factory_app:create_app()")
    project.module(
        "factory_app",
        """
        from fastapi import FastAPI

        def create_app():
            app = FastAPI()

            @app.get("/")
            async def root():
                return {"made": "by factory"}

            return app
        """,
    )
    project.module(
        "test_factory",
        """
        async def test_root(client, app):
            assert (await client.get("/")).json() == {"made": "by factory"}
        """,
    )
    project.run().assert_outcomes(passed=1)


def test_app_fixture_overridden_in_conftest(project: Project) -> None:
    project.ini()
    project.pytester.makeconftest(
        """
        import pytest
        from fastapi import FastAPI

        @pytest.fixture(scope="session")
        def app():
            app = FastAPI()

            @app.get("/")
            async def root():
                return {"from": "conftest"}

            return app
        """
    )
    project.module(
        "test_override",
        """
        async def test_root(client):
            assert (await client.get("/")).json() == {"from": "conftest"}
        """,
    )
    project.run().assert_outcomes(passed=1)


CLIENT_TEST = """
    async def test_hello(client):
        response = await client.get("/hello")
        assert response.json() == {"greeting": "hello"}
    """


def test_a_client_test_sets_up_the_apps_lifespan_once_for_the_session(project: Project) -> None:
    project.ini(testkit_app="simple_app:app")
    project.module("test_hello", CLIENT_TEST + CLIENT_TEST.replace("test_hello", "test_again"))
    # One run: --setup-show prints each set-up as it happens, and the tests still run.
    result = project.run("--setup-show")
    result.stdout.fnmatch_lines(
        ["*SETUP    S app_lifespan (fixtures used: _testkit_config, anyio_backend, app)"]
    )
    assert result.stdout.str().count("SETUP    S app_lifespan") == 1
    result.assert_outcomes(passed=2)


def test_a_conftest_that_imports_the_fixtures_gets_working_copies(project: Project) -> None:
    project.ini(testkit_app="simple_app:app", testkit_backends="asyncio trio")
    project.pytester.makeconftest("from anyio_fastapi_testkit.fixtures import *\n")
    project.module("test_hello", CLIENT_TEST)
    result = project.run("--setup-show")
    # The conftest's copies of app and app_lifespan take the config from the plugin.
    result.stdout.fnmatch_lines(
        ["*SETUP    S app_lifespan (fixtures used: _testkit_config, anyio_backend, app)"]
    )
    result.assert_outcomes(passed=2)


def test_plain_asgi_app_without_lifespan(project: Project) -> None:
    project.ini(testkit_app="raw_app:app", testkit_backends="asyncio trio")
    project.module(
        "raw_app",
        """
        async def app(scope, receive, send):
            assert scope["type"] == "http"
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"raw"})
        """,
    )
    project.module(
        "test_raw",
        """
        async def test_raw(client):
            assert (await client.get("/")).text == "raw"
        """,
    )
    project.run().assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("setting", "modules", "expected"),
    [
        ("nowhere:app", {}, "*testkit_app = 'nowhere:app': module 'nowhere' cannot be imported*"),
        ("simple_app", {}, "*testkit_app = 'simple_app' must name the ASGI app as*"),
        ("simple_app:missing", {}, "*has no attribute 'missing'. Names it defines:*app*"),
        (
            "broken_app:app",
            {"broken_app": "import not_a_real_dependency\n"},
            "*imports a missing module*not_a_real_dependency*",
        ),
        (
            "raising_app:app",
            {"raising_app": "raise RuntimeError('settings missing')\n"},
            "*raised RuntimeError: settings missing*",
        ),
        ("fastapi:FastAPI", {}, "*names the class FastAPI, not an app instance*"),
        (
            "func_app:make",
            {"func_app": "def make():\n    pass\n"},
            "*not an ASGI app*if it builds the app, write func_app:make()*",
        ),
        ("simple_app:events", {}, "*is a list, not an ASGI app*"),
    ],
)
def test_bad_app_setting_is_a_clear_error(
    project: Project, setting: str, modules: dict[str, str], expected: str
) -> None:
    project.ini(testkit_app=setting)
    for name, source in modules.items():
        project.module(name, source)
    project.module(
        "test_any",
        """
        async def test_one(client):
            pass

        async def test_two(client):
            pass
        """,
    )
    result = project.run()
    result.stdout.fnmatch_lines([expected])
    # The session stops at the first error instead of repeating it for every test.
    result.assert_outcomes(errors=1)


def test_missing_app_setting_says_how_to_fix(project: Project) -> None:
    project.ini()
    project.module("test_any", "async def test_one(client):\n    pass\n")
    result = project.run()
    result.stdout.fnmatch_lines(["*No app to test: set testkit_app*override the `app` fixture*"])


def test_startup_failure_stops_session_with_the_apps_exception(project: Project) -> None:
    project.ini(testkit_app="failing_app:app")
    project.module(
        "failing_app",
        """
        from contextlib import asynccontextmanager
        from fastapi import FastAPI

        @asynccontextmanager
        async def lifespan(app):
            raise ConnectionRefusedError("cache server at redis://cache:6379 is down")
            yield

        app = FastAPI(lifespan=lifespan)
        """,
    )
    project.module(
        "test_any",
        """
        async def test_one(client):
            pass

        async def test_two(client):
            pass
        """,
    )
    result = project.run()
    result.stdout.fnmatch_lines(
        [
            "*cache server at redis://cache:6379 is down*",
            "*lifespan startup of the app (FastAPI*) raised ConnectionRefusedError*",
        ]
    )
    result.assert_outcomes(errors=1)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_startup_timeout_names_app_phase_and_setting(project: Project, backend: str) -> None:
    project.ini(testkit_app="slow_app:app", testkit_startup_timeout="0.5", testkit_backends=backend)
    project.module(
        "slow_app",
        """
        from contextlib import asynccontextmanager
        import anyio
        from fastapi import FastAPI

        @asynccontextmanager
        async def lifespan(app):
            await anyio.sleep(30)
            yield

        app = FastAPI(title="slow", lifespan=lifespan)
        """,
    )
    project.module("test_any", "async def test_one(client):\n    pass\n")
    result = project.run()
    result.stdout.fnmatch_lines(
        [
            "*lifespan startup of the app (FastAPI 'slow') did not finish within 0.5 s*"
            "testkit_startup_timeout*"
        ]
    )
    result.assert_outcomes(errors=1)


def test_shutdown_timeout_names_phase_and_setting(project: Project) -> None:
    project.ini(testkit_app="stuck_app:app", testkit_shutdown_timeout="0.5")
    project.module(
        "stuck_app",
        """
        from contextlib import asynccontextmanager
        import anyio
        from fastapi import FastAPI

        @asynccontextmanager
        async def lifespan(app):
            yield
            await anyio.sleep(30)

        app = FastAPI(title="stuck", lifespan=lifespan)
        """,
    )
    project.module("test_any", "async def test_one(client):\n    pass\n")
    result = project.run()
    result.stdout.fnmatch_lines(
        ["*lifespan shutdown of the app (FastAPI 'stuck') did not finish within 0.5 s*"]
    )
    result.assert_outcomes(passed=1, errors=1)


def test_bad_timeout_setting(project: Project) -> None:
    project.ini(testkit_app="simple_app:app", testkit_startup_timeout="soon")
    project.module("test_any", "async def test_one(client):\n    pass\n")
    result = project.run()
    result.stderr.fnmatch_lines(["*testkit_startup_timeout = 'soon' is not a number of seconds*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
