"""The example apps' own suites, run as their users run them, on the embedded server.

The runs share one cached cluster (``subsession_share``: initdb once, then a start per run,
each example's schema its own template in it), as a user's repeated runs do.

Each passing configuration runs once, in random order on both backends: that one run proves
the suite passes with that configuration, that isolation does not depend on the order of the
tests, and what the trio backend does with the database tests.
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
FIXED_SEED = 4242
FRESH_SEED = random.randrange(1, 2**31)


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


# The transport is the kit's URL, whatever builds the schema: a socket-only server serves the
# Alembic run, its env.py and the app's DATABASE_URL included.
ALEMBIC_ON_A_UNIX_SOCKET = (
    "-o",
    "testkit_schema=alembic:alembic.ini",
    "-o",
    "testkit_database_env=DATABASE_URL",
    "-o",
    "testkit_server_tcp=false",
)

# What the run on trio must show of each example: a test that never reaches the database
# passed on trio, the database tests were skipped with the reason, none of them passed there.
TRIO_CHECKS = {
    "bookshelf": (
        r"test_no_database.py::test_health\S*\[trio\] PASSED",
        r"test_authors.py::\S*\[trio\] PASSED",
        1,
    ),
    "taskboard": (
        r"test_health.py::test_health\[trio\] PASSED",
        r"test_projects.py::\S*\[trio\] PASSED",
        25,
    ),
}
# A verbose line of a test that ran on asyncio, with its outcome.
ON_ASYNCIO = re.compile(r"^\S+::\S+\[(?:[^\]\s]*-)?asyncio(?:-[^\]\s]*)?\] (\w+)", re.MULTILINE)


@pytest.mark.parametrize(
    ("example", "driver", "settings", "seed"),
    [
        pytest.param("bookshelf", "psycopg", (), FIXED_SEED, id="bookshelf-metadata-create_all"),
        pytest.param(
            "bookshelf",
            "psycopg",
            ALEMBIC_ON_A_UNIX_SOCKET,
            FRESH_SEED,
            id="bookshelf-alembic-upgrade-head-unix-socket-only",
        ),
        pytest.param(
            "bookshelf",
            "asyncpg",
            ("-o", "testkit_database_driver=asyncpg"),
            FRESH_SEED,
            id="bookshelf-asyncpg",
        ),
        pytest.param("taskboard", "asyncpg", (), FIXED_SEED, id="taskboard-asyncpg"),
        # The kit's sessions on psycopg; the app's own engine stays on asyncpg, unused.
        pytest.param(
            "taskboard",
            "psycopg",
            ("-o", "testkit_database_driver=psycopg"),
            FRESH_SEED,
            id="taskboard-psycopg",
        ),
    ],
)
def test_example_suite_passes_in_random_order_on_both_backends(
    share: SubsessionShare, example: str, driver: str, settings: tuple[str, ...], seed: int
) -> None:
    # pytest-randomly shuffles modules and tests; pytest still groups them by backend, so
    # each backend's loop is made once, and isolation must not depend on which test ran first
    # (the fixed seed reproduces one order, the fresh one tries another each time).
    # On trio the database tests skip, saying why, and the others pass.
    code, counts, output = run_example(
        share,
        example,
        *settings,
        "-p",
        "randomly",
        f"--randomly-seed={seed}",
        "--testkit-backends=asyncio trio",
        "-rs",
        "-v",
    )
    assert code == 0, f"--randomly-seed={seed}\n{output}"
    assert "failed" not in counts and "error" not in counts, output
    on_asyncio = ON_ASYNCIO.findall(output)
    assert on_asyncio.count("PASSED") >= 30, output
    if example == "taskboard":  # nothing of it is skipped on asyncio
        assert set(on_asyncio) == {"PASSED"}, output
    passed_on_trio, database_test_on_trio, least_skipped = TRIO_CHECKS[example]
    assert counts.get("skipped", 0) >= least_skipped, output
    assert re.search(passed_on_trio, output), output
    assert f"async driver ({driver}) runs on asyncio only" in output, output
    assert not re.search(database_test_on_trio, output), output


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


def test_taskboard_suite_fails_without_the_sessionmaker_setting(share: SubsessionShare) -> None:
    # The service and the background job commit through the app's import-time engine: the
    # leak check names the tables, and the isolation tests see the leaked rows.
    code, counts, output = run_example(share, "taskboard", "-o", "testkit_sessionmaker=")
    assert code == 1, output
    assert counts.get("failed", 0) > 0 and counts.get("error", 0) > 0, output
    assert re.search(r"public\.audit_log \(0 -> \d+ rows\)", output), output
    assert "test_isolation.py::test_2_nothing_survived - " in output, output
