"""Blocked loop: code that holds the event loop is reported with its stack, on both backends."""

from __future__ import annotations

from conftest import Project

SLOW_ENDPOINT = """
    import time

    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/report")
    async def report():
        time.sleep(0.4)
        return {"ok": True}
"""


def test_time_sleep_in_an_endpoint_is_reported_at_its_line_on_both_backends(
    project: Project,
) -> None:
    project.ini(
        testkit_app="slow_endpoint:app",
        testkit_backends="asyncio trio",
        testkit_blocked_loop="0.1",
    )
    project.module("slow_endpoint", SLOW_ENDPOINT)
    project.module(
        "test_report",
        """
        async def test_report(client):
            assert (await client.get("/report")).json() == {"ok": True}
        """,
    )
    result = project.run("-W", "always")
    result.assert_outcomes(passed=2, warnings=2)
    for backend in ("asyncio", "trio"):
        result.stdout.fnmatch_lines(
            [
                f"*slow_endpoint.py:9: BlockedLoopWarning: test_report.py::test_report[[]{backend}"
                "[]]: the event loop was blocked for at least 0.* s (testkit_blocked_loop = 0.1) "
                "at *slow_endpoint.py:9*",
                "*in report",
                "*time.sleep(0.4)",
                "*anyio.to_thread.run_sync*",
            ]
        )


def test_filterwarnings_error_turns_it_into_a_failure(project: Project) -> None:
    project.ini(testkit_blocked_loop="0.1")
    project.module(
        "test_blocking",
        """
        import time

        async def test_blocks():
            time.sleep(0.4)
        """,
    )
    result = project.run("-W", "error::anyio_fastapi_testkit.BlockedLoopWarning")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*BlockedLoopWarning*test_blocking.py:4*"])


def test_each_test_reports_its_own_blocks_also_after_a_pause(project: Project) -> None:
    # The watchdog thread stops pinging after a while without a running async test (here a
    # fixture's set-up); the next test that blocks is still seen. A ping left over from a
    # test that ended blocked is not counted against the next test.
    project.ini(testkit_backends="asyncio trio", testkit_blocked_loop="0.1")
    project.module(
        "test_pause",
        """
        import time

        import pytest

        from anyio_fastapi_testkit._diagnostics import blocking

        # The kit's idle time before the watchdog stops pinging (1 s), set smaller where the
        # kit reads it, so that the pause can be short and still longer than it.
        blocking._IDLE_BEFORE_SLEEP = 0.2

        @pytest.fixture
        def pause():
            time.sleep(0.5)

        async def test_blocks_at_its_end():
            time.sleep(0.4)

        async def test_quick():
            pass

        async def test_blocks_after_a_pause(pause):
            time.sleep(0.4)

        async def test_quick_again():
            pass
        """,
    )
    result = project.run("-W", "always")
    result.assert_outcomes(passed=8, warnings=4)
    for backend in ("asyncio", "trio"):
        for test in ("test_blocks_at_its_end", "test_blocks_after_a_pause"):
            result.stdout.fnmatch_lines(
                [f"*BlockedLoopWarning: test_pause.py::{test}[[]{backend}[]]: the event loop*"]
            )
    result.stdout.no_fnmatch_line("*BlockedLoopWarning: test_pause.py::test_quick*")


def test_no_false_alarm_for_short_steps_and_awaited_sleeps(project: Project) -> None:
    project.ini(
        testkit_app="simple_app:app", testkit_backends="asyncio trio", testkit_blocked_loop="0.1"
    )
    project.module(
        "test_fine",
        """
        import time

        import anyio

        async def test_many_short_steps(client):
            for _ in range(20):
                time.sleep(0.01)
                await anyio.sleep(0.01)
            assert (await client.get("/hello")).status_code == 200

        async def test_thread(client):
            await anyio.to_thread.run_sync(time.sleep, 0.4)
        """,
    )
    project.run("-W", "error").assert_outcomes(passed=4)


def test_off_disables_it(project: Project) -> None:
    project.ini(testkit_blocked_loop="off")
    project.module(
        "test_blocking",
        """
        import time

        async def test_blocks():
            time.sleep(0.4)
        """,
    )
    project.run("-W", "error").assert_outcomes(passed=1)


def test_bad_value_is_a_usage_error(project: Project) -> None:
    project.ini(testkit_blocked_loop="soon")
    project.module("test_x", "async def test_x():\n    pass\n")
    result = project.run()
    result.stderr.fnmatch_lines(["*testkit_blocked_loop = 'soon' is not a number of seconds*"])
