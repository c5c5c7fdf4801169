"""The example apps' own suites, run as their users run them, on the embedded server.

The runs share one cached cluster (``subsession_share``: initdb once, then a start per run,
each example's schema its own template in it), as a user's repeated runs do.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SubsessionShare

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_TIMEOUT = 300


@pytest.fixture
def share(subsession_share: SubsessionShare, monkeypatch: pytest.MonkeyPatch) -> SubsessionShare:
    """The process's shared TMPDIR and cache folder (not the example's own folder, which
    stays clean), and no developer's TESTKIT_DATABASE_URL: the embedded server."""
    monkeypatch.delenv("TESTKIT_DATABASE_URL", raising=False)
    return subsession_share


def run_example(share: SubsessionShare, name: str, *args: str) -> tuple[int, dict[str, int], str]:
    completed = subprocess.run(
        # In file order unless a test asks for pytest-randomly (-p randomly unblocks it).
        [
            sys.executable,
            "-m",
            "pytest",
            "-o",
            f"cache_dir={share.cache_dir}",
            "-p",
            "no:asyncio",
            "-p",
            "no:randomly",
            *args,
        ],
        cwd=EXAMPLES / name,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
        check=False,
        env={**os.environ, "TMPDIR": str(share.tmpdir)},
    )
    output = completed.stdout + completed.stderr
    # From stdout: the kit's progress lines before collection go to stderr.
    summary = completed.stdout.strip()
    last = summary.splitlines()[-1] if summary else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}
    return completed.returncode, counts, output


@pytest.mark.parametrize(
    "schema_args",
    [
        pytest.param((), id="metadata-create_all"),
        # The transport is the kit's URL, whatever builds the schema: a socket-only server
        # serves the Alembic run, its env.py and the app's DATABASE_URL included.
        pytest.param(
            (
                "-o",
                "testkit_schema=alembic:alembic.ini",
                "-o",
                "testkit_database_env=DATABASE_URL",
                "-o",
                "testkit_server_tcp=false",
            ),
            id="alembic-upgrade-head-unix-socket-only",
        ),
        pytest.param(("-o", "testkit_database_driver=asyncpg"), id="asyncpg"),
    ],
)
def test_bookshelf_suite_passes_on_the_embedded_server(
    share: SubsessionShare, schema_args: tuple[str, ...]
) -> None:
    code, counts, output = run_example(share, "bookshelf", *schema_args)
    assert code == 0, output
    assert counts.get("passed", 0) >= 30, output
    assert "failed" not in counts and "error" not in counts, output


def test_bookshelf_money_tests_fail_when_requests_share_the_test_session(
    share: SubsessionShare,
) -> None:
    # With the test's own session, the app sees the test's objects ("4.5", Decimal("4"))
    # instead of the NUMERIC(10, 2) values it would load: the suite notices.
    code, counts, output = run_example(share, "bookshelf", "-o", "testkit_share_session=true")
    assert code == 1 and counts.get("failed") == 2, output
    failed = set(re.findall(r"^FAILED tests/(\S+?)(?: - |$)", output, re.MULTILINE))
    assert failed == {
        "test_prices.py::test_prices_seeded_by_the_test_are_returned_as_the_database_stores_them",
        "test_prices.py::test_patch_that_keeps_the_price_records_nothing",
    }, output


@pytest.mark.parametrize(
    "driver_args",
    [
        pytest.param((), id="asyncpg"),
        # The kit's sessions on psycopg; the app's own engine stays on asyncpg, unused.
        pytest.param(("-o", "testkit_database_driver=psycopg"), id="psycopg"),
    ],
)
def test_taskboard_suite_passes_on_the_embedded_server(
    share: SubsessionShare, driver_args: tuple[str, ...]
) -> None:
    code, counts, output = run_example(share, "taskboard", *driver_args)
    assert code == 0, output
    assert counts.get("passed", 0) >= 30, output
    assert "failed" not in counts and "error" not in counts and "skipped" not in counts, output


def test_taskboard_suite_fails_without_the_sessionmaker_setting(share: SubsessionShare) -> None:
    # The service and the background job commit through the app's import-time engine: the
    # leak check names the tables, and the isolation tests see the leaked rows.
    code, counts, output = run_example(share, "taskboard", "-o", "testkit_sessionmaker=")
    assert code == 1, output
    assert counts.get("failed", 0) > 0 and counts.get("error", 0) > 0, output
    assert re.search(r"public\.audit_log \(0 -> \d+ rows\)", output), output
    assert "test_isolation.py::test_2_nothing_survived - " in output, output


# What the run on trio must show of each example: a test that never reaches the database
# passed on trio, the database tests were skipped with the reason, none of them passed there.
TRIO_CHECKS = {
    "bookshelf": (
        r"test_no_database.py::test_health\S*\[trio\] PASSED",
        "runs on asyncio only",
        r"test_authors.py::\S*\[trio\] PASSED",
        1,
    ),
    "taskboard": (
        r"test_health.py::test_health\[trio\] PASSED",
        "async driver (asyncpg) runs on asyncio only",
        r"test_projects.py::\S*\[trio\] PASSED",
        25,
    ),
}


@pytest.mark.parametrize("seed", [4242, random.randrange(1, 2**31)], ids=["fixed", "fresh"])
@pytest.mark.parametrize("example", ["bookshelf", "taskboard"])
def test_example_suites_pass_in_random_order_on_both_backends(
    share: SubsessionShare, example: str, seed: int
) -> None:
    # pytest-randomly shuffles modules and tests; pytest still groups them by backend, so
    # each backend's loop is made once, and isolation must not depend on which test ran first.
    # On trio the database tests skip, saying why, and the others pass.
    code, counts, output = run_example(
        share,
        example,
        "-p",
        "randomly",
        f"--randomly-seed={seed}",
        "--testkit-backends=asyncio trio",
        "-rs",
        "-v",
    )
    assert code == 0, f"--randomly-seed={seed}\n{output}"
    assert counts.get("passed", 0) >= 30, output
    assert "failed" not in counts and "error" not in counts, output
    passed_on_trio, reason, database_test_on_trio, least_skipped = TRIO_CHECKS[example]
    assert counts.get("skipped", 0) >= least_skipped, output
    assert re.search(passed_on_trio, output), output
    assert reason in output, output
    assert not re.search(database_test_on_trio, output), output
