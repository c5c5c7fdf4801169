"""Frozen time (freezegun, time-machine) does not stop or trip the kit's own clocks."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ITEMS_APP, Project

from anyio_fastapi_testkit._postgres.server import RunningServer

FREEZERS = {
    "freezegun": ("from freezegun import freeze_time", 'freeze_time("2001-02-03 04:05:06")'),
    "time-machine": (
        "import time_machine",
        'time_machine.travel("2001-02-03 04:05:06", tick=False)',
    ),
}


def frozen_module(freezer: str) -> str:
    imports, freeze = FREEZERS[freezer]
    return f"""
    import time

    import anyio
    import pytest
    {imports}

    @pytest.fixture
    async def frozen():
        with {freeze}:
            yield

    # The smallest limit: nothing else runs in this test.
    @pytest.mark.testkit_timeout(0.1)
    async def test_hung_while_frozen():
        with {freeze}:
            await anyio.Event().wait()

    async def test_half_a_second_while_frozen():
        # Real time passes (in a thread) while the clocks stand still or jump: a limit
        # (testkit_timeout = 1) that fired at once would fail this test.
        with {freeze}:
            await anyio.to_thread.run_sync(time.sleep, 0.5)

    async def test_client_started_under_a_frozen_fixture(frozen, client):
        assert (await client.get("/hello")).json() == {{"greeting": "hello"}}
        await anyio.to_thread.run_sync(time.sleep, 0.5)
    """


def test_timeouts_fire_on_time_and_lifespan_waits_work_while_time_is_frozen(
    project: Project,
) -> None:
    project.ini(testkit_app="simple_app:app", testkit_backends="asyncio trio", testkit_timeout="1")
    modules = {"freezegun": "test_freezegun", "time-machine": "test_time_machine"}
    for freezer, module in modules.items():
        project.module(module, frozen_module(freezer))
    result = project.run(
        "-p", "no:randomly", "-v", "-W", "error::anyio_fastapi_testkit.TestkitWarning"
    )
    # Each freezer, each backend: the hung test fails after its limit (not never, not at
    # once); the others pass, and the blocked-loop detector (default threshold) does not
    # mistake the frozen clock for a block.
    result.assert_outcomes(passed=8, failed=4)
    for module in modules.values():
        for backend in ("asyncio", "trio"):
            for test, outcome in (
                ("test_hung_while_frozen", "FAILED"),
                ("test_half_a_second_while_frozen", "PASSED"),
                ("test_client_started_under_a_frozen_fixture", "PASSED"),
            ):
                result.stdout.fnmatch_lines([f"{module}.py::{test}[[]{backend}[]] {outcome}*"])
            result.stdout.fnmatch_lines(
                [
                    f"*{module}.py::test_hung_while_frozen[[]{backend}[]] did not finish "
                    "within 0.1 s*",
                    "*await anyio.Event().wait()",
                ]
            )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("startup", ["hangs", "takes_half_a_second"])
def test_lifespan_startup_limit_while_time_is_frozen(
    project: Project, startup: str, backend: str
) -> None:
    # A startup that hangs waits out the smallest limit; one that takes half a second needs
    # a limit above that, so that a limit that fired at once would fail it.
    limit = "0.1" if startup == "hangs" else "1"
    project.ini(
        testkit_app="frozen_start:app", testkit_startup_timeout=limit, testkit_backends=backend
    )
    project.module(
        "frozen_start",
        f"""
        import time
        from contextlib import asynccontextmanager

        import anyio
        from fastapi import FastAPI
        from freezegun import freeze_time

        @asynccontextmanager
        async def lifespan(app):
            with freeze_time("2001-02-03"):
                if {startup == "hangs"}:
                    await anyio.Event().wait()
                await anyio.to_thread.run_sync(time.sleep, 0.5)
            yield

        app = FastAPI(lifespan=lifespan)
        """,
    )
    project.module("test_start", "async def test_start(client):\n    pass\n")
    result = project.run()
    if startup == "hangs":
        # Fired after its limit in real time, though the loop's clock stands still.
        result.stdout.fnmatch_lines(["*lifespan startup*did not finish within 0.1 s*"])
    else:
        # Not at once, though freezing moved the loop's clock decades ahead.
        result.assert_outcomes(passed=1)


FROZEN_FIXTURE_TESTS = """
import httpx
import pytest
from freezegun import freeze_time
from sqlalchemy import text

import items_app  # imported at collection, as test suites do, before any freeze


@pytest.fixture
async def frozen():
    with freeze_time("2001-02-03 04:05:06"):
        yield


@pytest.fixture(scope="session")
def frozen_session():
    # Set up before the session-scoped live server: it starts, and stops, while time is frozen.
    with freeze_time("2001-02-03 04:05:06"):
        yield


async def test_live_server_started_while_frozen(frozen_session, live_server):
    async with httpx.AsyncClient(verify=False) as outside:
        assert (await outside.get(f"{live_server}/health")).status_code == 200


async def test_stream_left_early_while_frozen(frozen, client):
    async with client.stream("GET", "/health") as response:
        assert response.status_code == 200


async def test_database_provisioned_while_frozen(frozen, db_session, anyio_backend):
    if anyio_backend == "trio":
        pytest.skip("the async drivers run on asyncio only")
    assert await db_session.scalar(text("SELECT 1")) == 1
"""


def test_kit_waits_work_under_a_frozen_fixture(
    project: Project, pg_server: RunningServer, private_tmpdir: Path
) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(
        testkit_app="items_app:app",
        testkit_schema="items_app:Base.metadata",
        testkit_session_dependency="items_app:get_session",
        testkit_backends="asyncio trio",
        testkit_timeout="20",
    )
    project.module("test_frozen_fixture", FROZEN_FIXTURE_TESTS)
    url = pg_server.info.admin_url.render_as_string(hide_password=False)
    result = project.run(
        f"--testkit-db-url={url}", "-W", "error::anyio_fastapi_testkit.TestkitWarning"
    )
    result.assert_outcomes(passed=5, skipped=1)
