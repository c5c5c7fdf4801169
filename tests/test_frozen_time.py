"""Frozen time (freezegun, time-machine) does not stop or trip the kit's own clocks."""

from __future__ import annotations

import pytest

from conftest import Project

FREEZERS = {
    "freezegun": ("from freezegun import freeze_time", 'freeze_time("2001-02-03 04:05:06")'),
    "time-machine": ("import time_machine", 'time_machine.travel("2001-02-03 04:05:06", tick=False)'),
}


def frozen_module(freezer: str) -> str:
    imports, freeze = FREEZERS[freezer]
    return f"""
    import anyio
    import pytest
    {imports}

    @pytest.fixture
    async def frozen():
        with {freeze}:
            yield

    async def test_hung_while_frozen():
        with {freeze}:
            await anyio.Event().wait()

    async def test_quick_while_frozen():
        with {freeze}:
            await anyio.lowlevel.checkpoint()

    async def test_client_started_under_a_frozen_fixture(frozen, client):
        assert (await client.get("/hello")).json() == {{"greeting": "hello"}}
    """


@pytest.mark.parametrize("freezer", ["freezegun", "time-machine"])
def test_timeouts_fire_on_time_and_lifespan_waits_work_while_time_is_frozen(
    project: Project, freezer: str
) -> None:
    project.ini(
        testkit_app="simple_app:app", testkit_backends="asyncio trio", testkit_timeout="1"
    )
    project.module("test_frozen", frozen_module(freezer))
    result = project.run("-p", "no:randomly", "-W", "error::anyio_fastapi_testkit.TestkitWarning")
    # The hung test fails after its second (not never, not at once); the others pass, and the
    # blocked-loop detector (default threshold) does not mistake the frozen clock for a block.
    result.assert_outcomes(passed=4, failed=2)
    for backend in ("asyncio", "trio"):
        result.stdout.fnmatch_lines(
            [
                f"*test_hung_while_frozen[[]{backend}[]] did not finish within 1 s*",
                "*await anyio.Event().wait()",
            ]
        )
    assert result.duration < 30


def test_lifespan_startup_timeout_fires_while_time_is_frozen(project: Project) -> None:
    project.ini(testkit_app="frozen_start:app", testkit_startup_timeout="1")
    project.module(
        "frozen_start",
        """
        from contextlib import asynccontextmanager

        import anyio
        from fastapi import FastAPI
        from freezegun import freeze_time

        @asynccontextmanager
        async def lifespan(app):
            with freeze_time("2001-02-03"):
                await anyio.Event().wait()
            yield

        app = FastAPI(lifespan=lifespan)
        """,
    )
    project.module("test_start", "async def test_start(client):\n    pass\n")
    result = project.run()
    result.stdout.fnmatch_lines(["*lifespan startup*did not finish within 1 s*"])
    assert result.duration < 30
