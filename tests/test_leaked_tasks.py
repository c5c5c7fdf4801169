"""Leaked tasks (asyncio): reported with where they were created, then cancelled."""

from __future__ import annotations

import pytest
from conftest import Project

LEAKY = """
    import asyncio

    import anyio

    started = []

    async def forever():
        started.append("running")
        await asyncio.Event().wait()

    async def test_leaks():
        asyncio.create_task(forever(), name="the-leak")
        await asyncio.sleep(0)

    async def test_next_test_starts_clean():
        await asyncio.sleep(0)
        others = [t for t in asyncio.all_tasks() if t.get_name() == "the-leak"]
        assert others == []  # cancelled before this test began

    async def test_awaited_task_is_fine():
        task = asyncio.create_task(asyncio.sleep(0.01))
        await task

    async def test_task_group_is_fine():
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 0.01)
"""


def test_leaked_task_warns_with_its_creation_place_and_is_cancelled(project: Project) -> None:
    project.ini()
    project.module("test_leaky", LEAKY)
    result = project.run("-p", "no:randomly", "-W", "always")
    result.assert_outcomes(passed=4, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*test_leaky.py:12: LeakedTaskWarning: test_leaky.py::test_leaks left "
            "1 task running (first created at *test_leaky.py:12)*",
            "*task the-leak (forever), created at:",
            '*File "*test_leaky.py", line 12, in test_leaks',
            '*asyncio.create_task(forever(), name="the-leak")',
            "*Fix one of: await the task*",
        ]
    )


def test_tasks_that_end_just_after_the_test_are_not_leaks(project: Project) -> None:
    project.ini(testkit_leaked_tasks="fail")
    project.module(
        "test_ending",
        """
        import asyncio

        async def test_cancelled_not_awaited():
            task = asyncio.create_task(asyncio.Event().wait())
            await asyncio.sleep(0)
            task.cancel()  # ends at the loop's next iteration, after the test

        async def test_done_on_the_next_iteration():
            async def step():
                await asyncio.sleep(0)

            asyncio.create_task(step())

        async def test_many_finished_tasks():
            await asyncio.gather(*(asyncio.sleep(0) for _ in range(50)))
        """,
    )
    project.run("-W", "error").assert_outcomes(passed=3)


def test_fail_mode_fails_the_test(project: Project) -> None:
    project.ini(testkit_leaked_tasks="fail")
    project.module("test_leaky", LEAKY)
    result = project.run("-p", "no:randomly")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_leaks left 1 task running*", "FAILED test_leaky.py::test_leaks*"]
    )


def test_off_reports_nothing(project: Project) -> None:
    project.ini(testkit_leaked_tasks="off")
    project.module("test_leaky", LEAKY.replace("assert others == []", "pass"))
    result = project.run("-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=4)


def test_leaked_task_from_an_endpoint_names_the_apps_line(project: Project) -> None:
    project.ini(testkit_app="fire_and_forget:app", testkit_leaked_tasks="fail")
    project.module(
        "fire_and_forget",
        """
        import asyncio

        from fastapi import FastAPI

        app = FastAPI()

        async def notify():
            await asyncio.sleep(100)

        @app.post("/orders")
        async def create_order():
            asyncio.create_task(notify())
            return {"ok": True}
        """,
    )
    project.module(
        "test_orders",
        """
        async def test_order(client):
            assert (await client.post("/orders")).json() == {"ok": True}
        """,
    )
    result = project.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*left 1 task running (first created at *fire_and_forget.py:12)*",
            "*in create_order",
            "*asyncio.create_task(notify())",
        ]
    )


@pytest.mark.parametrize("backend", ["trio"])
def test_trio_needs_no_tracking(project: Project, backend: str) -> None:
    # A nursery cannot be left while its tasks run: the test waits, nothing leaks.
    project.ini(testkit_backends=backend, testkit_leaked_tasks="fail")
    project.module(
        "test_trio",
        """
        import anyio

        async def test_nursery():
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 0.01)
        """,
    )
    project.run("-W", "error").assert_outcomes(passed=1)


def test_a_failing_test_still_loses_its_tasks_and_keeps_the_clients(project: Project) -> None:
    project.ini(testkit_app="simple_app:app", testkit_leaked_tasks="fail")
    project.module(
        "test_failing",
        """
        import asyncio

        async def test_fails_leaving_a_task_and_an_open_response(client):
            asyncio.create_task(asyncio.Event().wait(), name="the-leak")
            response = await client.send(client.build_request("GET", "/hello"), stream=True)
            assert response.status_code == 500  # fails; the response is still open

        async def test_next(client):
            assert [t for t in asyncio.all_tasks() if t.get_name() == "the-leak"] == []
            assert (await client.get("/hello")).status_code == 200
        """,
    )
    result = project.run("-p", "no:randomly")
    # Only the test's own failure: no leak report on top of it, no error at the client's
    # teardown (its task group still owns the open response's task).
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.no_fnmatch_line("*left 1 task running*")
