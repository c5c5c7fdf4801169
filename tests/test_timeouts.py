"""Per-test timeouts inside the loop: the hung test is cancelled and failed with task stacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Project, database_names

from anyio_fastapi_testkit._postgres.server import RunningServer

HANGING = """
    import anyio
    import pytest

    async def wait_for_ever(event):
        await event.wait()

    async def sleeper():
        await anyio.sleep(100)

    async def test_hangs():
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            await wait_for_ever(anyio.Event())

    async def test_quick():
        await anyio.sleep(0.01)
"""


@pytest.mark.parametrize("how", ["ini", "flag", "marker"])
def test_hung_test_fails_with_every_tasks_stack_on_both_backends(
    project: Project, how: str
) -> None:
    source = HANGING
    args: tuple[str, ...] = ()
    if how == "ini":
        project.ini(testkit_backends="asyncio trio", testkit_timeout="0.5")
        setting = "testkit_timeout / --testkit-timeout"
    elif how == "flag":
        project.ini(testkit_backends="asyncio trio")
        args = ("--testkit-timeout=0.5",)
        setting = "testkit_timeout / --testkit-timeout"
    else:
        project.ini(testkit_backends="asyncio trio", testkit_timeout="60")
        source = source.replace(
            "async def test_hangs", "@pytest.mark.testkit_timeout(0.5)\n    async def test_hangs"
        )
        setting = "@pytest.mark.testkit_timeout"
    project.module("test_hang", source)
    result = project.run("-p", "no:randomly", *args)
    result.assert_outcomes(passed=2, failed=2)
    for backend in ("asyncio", "trio"):
        result.stdout.fnmatch_lines(
            [
                f"*test_hangs[[]{backend}[]] did not finish within 0.5 s ({setting})*",
                "*in test_hangs",
                "*await wait_for_ever(anyio.Event())",
                "*in wait_for_ever",
            ]
        )
    result.stdout.fnmatch_lines(["*in sleeper", "*await anyio.sleep(100)"])


def test_hung_endpoint_shows_where_the_app_waits(project: Project) -> None:
    project.ini(testkit_app="stuck_endpoint:app", testkit_timeout="0.5")
    project.module(
        "stuck_endpoint",
        """
        import anyio
        from fastapi import FastAPI

        app = FastAPI()

        @app.get("/stuck")
        async def stuck():
            await anyio.Event().wait()
        """,
    )
    project.module(
        "test_stuck",
        """
        async def test_calls_stuck_endpoint(client):
            await client.get("/stuck")
        """,
    )
    result = project.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*did not finish within 0.5 s*", "*stuck_endpoint.py*in stuck"])


def test_no_false_alarm_under_the_limit(project: Project) -> None:
    project.ini(testkit_backends="asyncio trio", testkit_timeout="5")
    project.module(
        "test_fine",
        """
        import anyio

        async def test_sleeps_a_little():
            await anyio.sleep(0.05)

        async def test_returns_value_of_work():
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 0.01)
        """,
    )
    project.run().assert_outcomes(passed=4)


def test_bad_marker_value(project: Project) -> None:
    project.ini()
    project.module(
        "test_bad",
        """
        import pytest

        @pytest.mark.testkit_timeout("soon")
        async def test_marked():
            pass
        """,
    )
    result = project.run()
    result.stdout.fnmatch_lines(["*testkit_timeout needs a positive number of seconds*'soon'*"])


# Six hangs are waited out here, each for the whole limit: the smallest that the passing
# parts (a trivial test and its fixture's set-up) are still far within.
FIXTURE_LIMIT = 0.2

HANGING_FIXTURES = """
    import anyio
    import pytest

    async def wait_for_ever():
        await anyio.Event().wait()

    @pytest.fixture
    async def stuck_setup():
        await wait_for_ever()
        yield

    @pytest.fixture
    async def stuck_teardown():
        yield "value"
        await wait_for_ever()

    @pytest.fixture
    async def stuck_coroutine():
        await wait_for_ever()

    @pytest.mark.testkit_timeout({limit})
    async def test_setup(stuck_setup):
        pass

    @pytest.mark.testkit_timeout({limit})
    async def test_teardown(stuck_teardown):
        assert stuck_teardown == "value"

    @pytest.mark.testkit_timeout({limit})
    async def test_coroutine(stuck_coroutine):
        pass
"""


def test_hung_fixture_setup_and_teardown_fail_with_name_phase_and_stack(
    project: Project,
) -> None:
    project.ini(testkit_backends="asyncio trio")
    project.module("test_fixture_hang", HANGING_FIXTURES.format(limit=FIXTURE_LIMIT))
    result = project.run("-p", "no:randomly")
    # test_teardown passes, then its fixture's teardown errors: one pass and one error each.
    result.assert_outcomes(passed=2, errors=6)
    for backend in ("asyncio", "trio"):
        for name, phase in [
            ("stuck_setup", "setup"),
            ("stuck_teardown", "teardown"),
            ("stuck_coroutine", "setup"),
        ]:
            result.stdout.fnmatch_lines(
                [
                    f"*ERROR at {phase} of test_*[[]{backend}[]]*",
                    f"*The {phase} of fixture '{name}' (function-scoped) did not finish within "
                    f"{FIXTURE_LIMIT} s (@pytest.mark.testkit_timeout) and was cancelled*",
                    f"*in {name}",
                    "*await wait_for_ever()",
                    "*in wait_for_ever",
                ]
            )


def test_session_fixture_takes_the_setting_not_the_marker(project: Project) -> None:
    project.ini(testkit_timeout="0.5")
    project.module(
        "test_session_hang",
        """
        import anyio
        import pytest

        @pytest.fixture(scope="session")
        async def slow_resource(anyio_backend):
            # Longer than the sub-session may take: the limit must cancel it, not wait.
            await anyio.sleep(3600)
            yield

        @pytest.mark.testkit_timeout(60)
        async def test_uses_it(slow_resource):
            pass
        """,
    )
    result = project.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*The setup of fixture 'slow_resource' (session-scoped) did not finish within 0.5 s "
            "(testkit_timeout / --testkit-timeout)*",
            "*await anyio.sleep(3600)",
        ]
    )


def test_hung_lifespan_startup_is_reported_with_the_apps_stack(project: Project) -> None:
    project.ini(testkit_app="slow_start:app", testkit_timeout="0.5")
    project.module(
        "slow_start",
        """
        from contextlib import asynccontextmanager

        import anyio
        from fastapi import FastAPI

        @asynccontextmanager
        async def lifespan(app):
            await anyio.sleep(30)
            yield

        app = FastAPI(lifespan=lifespan)
        """,
    )
    project.module(
        "test_slow_start",
        """
        async def test_needs_client(client):
            pass
        """,
    )
    result = project.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*The setup of fixture 'app_lifespan' (session-scoped) did not finish within 0.5 s*",
            "*slow_start.py*in lifespan",
            "*await anyio.sleep(30)",
        ]
    )


def test_fixtures_under_their_limit_pass(project: Project) -> None:
    project.ini(testkit_backends="asyncio trio", testkit_timeout="5", testkit_app="simple_app:app")
    project.module(
        "test_quick_fixtures",
        """
        import anyio
        import pytest

        @pytest.fixture
        async def quick():
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 0.01)
                yield "ready"
                tg.cancel_scope.cancel()

        class TestInAClass:
            @pytest.fixture
            async def method_fixture(self):
                return self

            async def test_method(self, method_fixture, quick, client):
                assert method_fixture is self
                assert quick == "ready"
                assert (await client.get("/hello")).json() == {"greeting": "hello"}
        """,
    )
    project.run().assert_outcomes(passed=2)


def test_hung_database_provisioning_fails_the_test_instead_of_hanging_it(
    project: Project, pg_server: RunningServer, private_tmpdir: Path
) -> None:
    # The schema source is imported while the test database is built, in a worker thread. It
    # waits (on a condition, not a delay) until the session's end, just before the kit's own
    # end of the run: the limit fires while the thread is inside it, and the kit's end of the
    # run finds the thread still at work on the database it makes.
    project.ini(testkit_schema="slow_schema:metadata", testkit_timeout="1")
    project.module(
        "slow_schema",
        """
        import time
        from pathlib import Path

        from sqlalchemy import MetaData

        def wait_for_the_end():
            deadline = time.monotonic() + 600  # only against waiting for ever
            while not Path("session-ended").exists() and time.monotonic() < deadline:
                time.sleep(0.01)

        wait_for_the_end()
        metadata = MetaData()
        """,
    )
    project.module(
        "conftest",
        """
        from pathlib import Path

        import pytest

        @pytest.hookimpl(tryfirst=True)  # before the kit's end of the run
        def pytest_unconfigure(config):
            Path(config.rootpath, "session-ended").touch()
        """,
    )
    project.module(
        "test_needs_db",
        """
        async def test_queries(db_connection):
            pass
        """,
    )
    result = project.run(f"--testkit-db-url={pg_server.info.admin_url.render_as_string(False)}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*The setup of fixture '*' (*-scoped) did not finish within 1 s*",
            "*thread *, running:",
            "*slow_schema.py*",
            "*wait_for_the_end()",
        ]
    )
    # The abandoned thread finishes its work once let go, and the kit's end of the run waits
    # for it to drop the database it made: nothing left behind (a hang for ever fails at
    # SUBSESSION_TIMEOUT).
    assert not [name for name in database_names(pg_server.info.admin_url) if "test_" in name]
