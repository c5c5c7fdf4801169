"""Per-test timeouts inside the loop: the hung test is cancelled and failed with task stacks."""

from __future__ import annotations

import pytest

from conftest import Project

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
