"""The example apps' own suites, run as their users run them, on the embedded server."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_TIMEOUT = 300


def run_example(name: str, *args: str) -> tuple[int, dict[str, int], str]:
    completed = subprocess.run(
        # In file order unless a test asks for pytest-randomly (-p randomly unblocks it).
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
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
        pytest.param(
            ("-o", "testkit_schema=alembic:alembic.ini", "-o", "testkit_database_env=DATABASE_URL"),
            id="alembic-upgrade-head",
        ),
        pytest.param(("-o", "testkit_database_driver=asyncpg"), id="asyncpg"),
        pytest.param(("-o", "testkit_server_tcp=false"), id="unix-socket-only"),
    ],
)
def test_bookshelf_suite_passes_on_the_embedded_server(schema_args: tuple[str, ...]) -> None:
    code, counts, output = run_example("bookshelf", *schema_args)
    assert code == 0, output
    assert counts.get("passed", 0) >= 30, output
    assert "failed" not in counts and "error" not in counts, output


def test_bookshelf_suite_on_trio_skips_only_database_tests_and_says_why() -> None:
    code, counts, output = run_example("bookshelf", "--testkit-backends=asyncio trio", "-rs", "-v")
    assert code == 0, output
    assert counts.get("skipped", 0) > 0, output
    assert "runs on asyncio only" in output
    # The tests that never reach the database ran, and passed, on trio too.
    assert re.search(r"test_no_database.py::test_health\S*\[trio\] PASSED", output), output
    assert not re.search(r"test_authors.py::\S*\[trio\] PASSED", output), output


def test_bookshelf_money_tests_fail_when_requests_share_the_test_session() -> None:
    # With the test's own session, the app sees the test's objects ("4.5", Decimal("4"))
    # instead of the NUMERIC(10, 2) values it would load: the suite notices.
    code, counts, output = run_example("bookshelf", "-o", "testkit_share_session=true")
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
def test_taskboard_suite_passes_on_the_embedded_server(driver_args: tuple[str, ...]) -> None:
    code, counts, output = run_example("taskboard", *driver_args)
    assert code == 0, output
    assert counts.get("passed", 0) >= 30, output
    assert "failed" not in counts and "error" not in counts and "skipped" not in counts, output


def test_taskboard_suite_fails_without_the_sessionmaker_setting() -> None:
    # The service and the background job commit through the app's import-time engine: the
    # leak check names the tables, and the isolation tests see the leaked rows.
    code, counts, output = run_example("taskboard", "-o", "testkit_sessionmaker=")
    assert code == 1, output
    assert counts.get("failed", 0) > 0 and counts.get("error", 0) > 0, output
    assert re.search(r"public\.audit_log \(0 -> \d+ rows\)", output), output
    assert "test_isolation.py::test_2_nothing_survived - " in output, output


def test_taskboard_health_runs_on_trio_and_database_tests_skip() -> None:
    code, counts, output = run_example("taskboard", "--testkit-backends=asyncio trio", "-rs", "-v")
    assert code == 0, output
    assert counts.get("skipped", 0) >= 25, output
    assert re.search(r"test_health.py::test_health\[trio\] PASSED", output), output
    assert "async driver (asyncpg) runs on asyncio only" in output, output
    assert not re.search(r"test_projects.py::\S*\[trio\] PASSED", output), output


@pytest.mark.parametrize("seed", [4242, random.randrange(1, 2**31)], ids=["fixed", "fresh"])
@pytest.mark.parametrize("example", ["bookshelf", "taskboard"])
def test_example_suites_pass_in_random_order_on_both_backends(example: str, seed: int) -> None:
    # pytest-randomly shuffles modules and tests; pytest still groups them by backend, so
    # each backend's loop is made once, and isolation must not depend on which test ran first.
    code, counts, output = run_example(
        example, "-p", "randomly", f"--randomly-seed={seed}", "--testkit-backends=asyncio trio"
    )
    assert code == 0, f"--randomly-seed={seed}\n{output}"
    assert counts.get("passed", 0) >= 30, output
    assert "failed" not in counts and "error" not in counts, output
