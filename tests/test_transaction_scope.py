"""Where a test's transaction ends: in the test's own call, or in the closer fixture.

An async test that the kit runs, with no async fixture of its own after the kit's, has its
transaction ended by its call, on the same trip through the loop. Async fixtures of the test
that come after the kit's may use the database and the client in their set-up and teardown:
the closer fixture then ends the transaction after them. Either way the next test starts from
an empty database, errors are reported at teardown, and nothing of a test is left behind.
"""

from __future__ import annotations

import pytest
from conftest import Project, needs_httpx2
from test_db_fixtures import items_project


@pytest.mark.usefixtures("db_driver")
def test_async_fixtures_use_the_transaction_in_set_up_and_teardown(project: Project) -> None:
    items_project(project)
    project.module(
        "test_fixtures",
        """
        import pytest

        from helpers import names
        from items_app import Item

        @pytest.fixture
        async def seeded(client, db_session):
            assert (await client.post("/items", json={"name": "by-fixture"})).status_code == 201
            yield "by-fixture"
            # After the test's call: still inside the test's transaction.
            assert await names(db_session) == ["by-fixture", "by-test"]
            db_session.add(Item(name="by-teardown"))
            await db_session.flush()
            response = await client.post("/items", json={"name": "by-teardown-app"})
            assert response.status_code == 201

        @pytest.fixture
        async def streamed(client):
            # A stream opened in a fixture runs in the test's task group, as in the test.
            async with client.stream("GET", "/items") as response:
                yield await response.aread()

        async def test_a_uses_the_fixture(seeded, client, db_session):
            assert (await client.post("/items", json={"name": "by-test"})).status_code == 201
            assert await names(db_session) == ["by-fixture", "by-test"]

        async def test_b_stream_in_a_fixture(streamed):
            assert streamed == b"[]"

        async def test_c_sees_none_of_it(db_session):
            assert await names(db_session) == []
        """,
    )
    project.run().assert_outcomes(passed=3)


def test_a_test_that_never_runs_leaves_nothing(project: Project) -> None:
    # Set up, then skipped by a later fixture: the call that would have ended the transaction
    # never runs; what a sync fixture put in the session must not reach the next test.
    items_project(project)
    project.module(
        "test_skipped",
        """
        import pytest

        from helpers import names
        from items_app import Item

        @pytest.fixture
        def pending(db_session):
            db_session.add(Item(name="never-flushed"))

        @pytest.fixture
        def skipper(pending):
            pytest.skip("not today")

        async def test_a_skipped(skipper):
            pass

        async def test_b_clean(client, db_session):
            assert (await client.post("/items", json={"name": "fresh"})).status_code == 201
            assert await names(db_session) == ["fresh"]
        """,
    )
    project.run().assert_outcomes(passed=1, skipped=1)


def test_the_transaction_ends_also_when_the_test_fails_or_times_out(project: Project) -> None:
    items_project(project)
    project.module(
        "test_failing",
        """
        import anyio
        import pytest

        from helpers import names

        async def test_0_opens_the_connection(db_session):
            # With no time limit: the embedded server may take a while to start.
            assert await names(db_session) == []

        async def test_a_fails(client):
            assert (await client.post("/items", json={"name": "failed"})).status_code == 201
            assert False, "on purpose"

        @pytest.mark.testkit_timeout(1)
        async def test_b_times_out(client):
            assert (await client.post("/items", json={"name": "timed-out"})).status_code == 201
            await anyio.sleep(30)

        async def test_c_clean(db_session):
            assert await names(db_session) == []
        """,
    )
    result = project.run()
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*AssertionError: on purpose*", "*did not finish within 1 s*"])


@needs_httpx2
def test_tests_leave_no_reference_cycles(project: Project) -> None:
    # Objects in a cycle live until the garbage collector runs, and a full collection scans
    # every object of the session: the kit's path through a test must leave none (anyio ends
    # every async generator fixture with one, which is why the kit's per-test fixtures are
    # plain ones). With httpx every response is in a cycle of httpx's own (the Response and
    # the BoundAsyncStream that refers back to it), so this needs the client on httpx2.
    items_project(project)
    project.module(
        "test_cycles",
        """
        import gc

        import pytest

        from helpers import names

        @pytest.mark.parametrize("n", range(3))
        async def test_warm_up(client, db_session, n):
            assert (await client.post("/items", json={"name": f"w{n}"})).status_code == 201

        # (Async, as the others: pytest would move sync tests away from the tests that use the
        # parametrized backend.)
        async def test_start():
            gc.collect()
            gc.disable()

        @pytest.mark.parametrize("n", range(5))
        async def test_requests(client, db_session, n):
            assert (await client.post("/items", json={"name": f"x{n}"})).status_code == 201
            assert (await client.get("/items")).json() == [f"x{n}"]
            assert await names(db_session) == [f"x{n}"]
            async with client.stream("GET", "/items") as response:
                await response.aread()

        async def test_none_left():
            found = gc.collect()
            gc.enable()
            assert found == 0, f"{found} objects in reference cycles after 5 tests"
        """,
    )
    project.run("-p", "no:randomly").assert_outcomes(passed=10)


def test_a_rollback_that_hangs_is_cut_off_at_the_time_limit(project: Project) -> None:
    # The server stops answering the test's connection (its backend is stopped, as a hung
    # server would be) just as the test ends: the rollback in the test's call is bounded by
    # the test's time limit, as an async fixture's teardown is; the connection is dropped and
    # the next test gets a new one. (The first test opens the connection, with no limit: the
    # embedded server's start may take longer than a second on a loaded machine.)
    items_project(project)
    project.module(
        "test_hang",
        """
        import os
        import signal
        import threading

        import pytest

        from helpers import names

        async def test_a_opens_the_connection(db_session):
            assert await names(db_session) == []

        STOPPED = []

        @pytest.mark.testkit_timeout(1)
        async def test_b_server_stops_answering(client, db_connection):
            assert (await client.post("/items", json={"name": "lost"})).status_code == 201
            pid = (await db_connection.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
            STOPPED.append(pid)
            # Only if the rollback is never cut off (a defect): it then ends, and the run's
            # outcomes say so.
            safety = threading.Timer(60, os.kill, (pid, signal.SIGCONT))
            safety.daemon = True
            safety.start()
            os.kill(pid, signal.SIGSTOP)

        async def test_c_clean(client, db_session):
            # The rollback was cut off (test_b's teardown) before this test: the backend may
            # go on now, so that the run can end (the database is dropped).
            os.kill(STOPPED[0], signal.SIGCONT)
            assert (await client.post("/items", json={"name": "fresh"})).status_code == 201
            assert await names(db_session) == ["fresh"]
        """,
    )
    result = project.run()
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_b_server_stops_answering*",
            "*The end of the test's transaction (closing its clients, the rollback and the leak "
            "check) did not finish within 1 s (@pytest.mark.testkit_timeout)*",
        ]
    )
