# ruff: noqa: RUF001  (the benchmarks' tables print the en dash)
"""Every benchmark script's smoke mode: each set-up runs once, end to end, on a real server
(correctness, never timing).

The scripts' smokes share what is slow to make (see benchmarks/run.py): one embedded server
for the bench's databases (``pg_server``, instead of a server per script) and one TMPDIR and
pytest cache folder for the kit's embedded-server runs (``subsession_share``: one cached
cluster for every project, instead of an initdb per project).

The generated tests of run.py check isolation (each lists exactly the rows it created), so
running them in pytest-randomly's order, with a fresh seed each time (printed), shows that
isolation does not depend on the order of the tests.
"""

from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import SubsessionShare, database_names

from anyio_fastapi_testkit._postgres.server import RunningServer

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SMOKE_TIMEOUT = 600


@pytest.fixture(scope="module")
def shared(pg_server: RunningServer, subsession_share: SubsessionShare) -> dict[str, str]:
    """The environment that makes the scripts' smokes use one server and one cached cluster."""
    # run.py derives the pytest cache folder from the state folder, as the share lays it out.
    assert subsession_share.cache_dir == subsession_share.tmpdir / ".pytest_cache"
    return {
        "BENCH_SMOKE_SERVER_URL": pg_server.info.admin_url.render_as_string(hide_password=False),
        "BENCH_SMOKE_KIT_STATE": str(subsession_share.tmpdir),
    }


def run_script(
    script: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        check=False,
        env={**os.environ, **(env or {})},
    )


def used_the_shared_server(pg_server: RunningServer, *databases: str) -> bool:
    """Whether the script made its databases on the shared server (not on one of its own)."""
    return set(databases) <= set(database_names(pg_server.info.admin_url))


@pytest.mark.timeout(SMOKE_TIMEOUT)
def test_every_benchmark_setup_passes_in_random_order(
    shared: dict[str, str], pg_server: RunningServer
) -> None:
    # Every default set-up, and K without its leak check, shuffled by pytest-randomly.
    seed = random.randrange(1, 2**31)
    keys = ("K", "B", "A", "C", "F0", "F1", "F2", "F3", "F4", "K-noleak")
    completed = run_script(
        "run.py", "--smoke", "--only", ",".join(keys), "--randomly-seed", str(seed), env=shared
    )
    output = f"--randomly-seed={seed}\n{completed.stdout}{completed.stderr}"
    assert completed.returncode == 0, output
    assert f"random order: --randomly-seed={seed}" in completed.stdout, output
    for key in keys:
        assert f"\n{key} " in f"\n{completed.stdout}", output
    assert completed.stdout.count(" ok (") == len(keys), output
    assert "FAILED" not in completed.stdout, output
    assert used_the_shared_server(pg_server, "bench_f3", "bench_k_noleak"), output


@pytest.mark.timeout(SMOKE_TIMEOUT)
def test_scale_script_runs_xdist_and_start_up(shared: dict[str, str]) -> None:
    completed = run_script("scale.py", "--smoke", env=shared)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "smoke: every run passed (start, xdist)" in completed.stdout, output
    # Only -n 2: a -n 0 run is set-up K in one process, which run.py's smoke runs.
    assert "| `-n 2` |" in completed.stdout and "| `-n 0` |" not in completed.stdout, output
    row = next(line for line in completed.stdout.splitlines() if line.startswith("| `-n 2` |"))
    passed = row.rstrip().removesuffix("|").rsplit("|", 1)[1].strip()
    assert passed == str(_bench_module("scale").SMOKE_N), output  # all the tests passed
    for start in ("| warm |", "| cold |"):
        assert start in completed.stdout, output


# The whole-suite benchmarks of issue 19: each script's --smoke runs every set-up once, with
# few tests and no warm-up, and exits non-zero unless each run ended as it must (all passed,
# all failed, all collected). Correctness only: no timing is asserted.


@pytest.mark.timeout(SMOKE_TIMEOUT)
def test_fixed_cost_script_runs_every_setup_and_profiles(shared: dict[str, str]) -> None:
    completed = run_script("fixed_cost.py", "--smoke", "--profile", env=shared)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "smoke: every set-up passed with 0 and 1 test(s)" in completed.stdout, output
    for setup in ("K-emb", "K-conf"):
        for count in (0, 1):
            assert completed.stdout.count(f"| {setup}, {count} test(s) | B |") == 2, output
    # The profile's three parts: phases of each set-up, the kit's own imports, cProfile.
    assert "| unconfigure (kit: drop databases, stop server) |" in completed.stdout, output
    assert "| anyio_fastapi_testkit |" in completed.stdout, output  # only K-emb imports it
    assert completed.stdout.count("pytest_load_initial_conftests") >= 2, output


@pytest.mark.timeout(SMOKE_TIMEOUT)
def test_suites_script_passes_every_suite_every_way(
    shared: dict[str, str], pg_server: RunningServer
) -> None:
    # Without the generated suite, whose ways the other smokes run (see the next test).
    completed = run_script("suites.py", "--smoke", "--shared", env=shared)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "smoke: every way of small, api40 passed" in completed.stdout, output
    for suite in ("small", "api40"):
        assert f"### {suite}:" in completed.stdout, output
    assert "### generated:" not in completed.stdout, output
    for way in ("kit-emb", "kit-conf"):
        assert completed.stdout.count(f"| {way} | hand |") == 4, output  # 2 suites, wall and CPU
    # api40's hand-written side shares the test's session: the kit's same recipe, beside.
    assert completed.stdout.count("| kit-conf-shared | hand |") == 2, output
    assert used_the_shared_server(pg_server, "suite_small_h", "suite_api40_k"), output


def test_suites_generated_suite_is_what_the_other_smokes_run(tmp_path: Path) -> None:
    # suites.py's generated suite: its kit project is set-up K's (run by run.py's smoke on a
    # configured server, by fixed_cost.py's as K-emb), its hand project set-up B's (run.py).
    suites = _bench_module("suites")
    generated = suites.SUITES["generated"]
    assert generated.hand_runner == "asyncio" and generated.driver == "psycopg"
    for way, key in (("kit", "K"), ("hand", "B")):
        built = suites.build(generated, way, tmp_path / "suites", 3)
        same = suites.generate(suites.BY_KEY[key], 3, tmp_path / "setups" / key)
        assert _files(built) == _files(same), way


@pytest.mark.timeout(SMOKE_TIMEOUT)
def test_failures_script_fails_every_test_with_and_without_the_kit(
    shared: dict[str, str],
) -> None:
    completed = run_script("failures.py", "--smoke", env=shared)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    # --tb=auto only: a --tb=no run is the same run without printing the reports.
    assert "smoke: every run failed exactly as expected (--tb=auto)" in completed.stdout, output
    for flavor in ("api", "plain"):
        assert completed.stdout.count(f"| {flavor}, kit, --tb=auto | no kit |") == 2, output
    assert "--tb=no" not in completed.stdout, output


@pytest.mark.timeout(SMOKE_TIMEOUT)
def test_collection_script_collects_every_test_every_way() -> None:
    completed = run_script("collection.py", "--smoke")
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "smoke: every way collected 100 tests" in completed.stdout, output
    for way in ("kit", "asyncio"):
        assert completed.stdout.count(f"| {way} | anyio |") == 2, output


def _bench_module(name: str) -> types.ModuleType:
    """A module of benchmarks/ (the scripts' own imports find their folder themselves)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def _paired() -> types.ModuleType:
    return _bench_module("paired")


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_benchmark_runs_are_checked_on_their_outcome_counts() -> None:
    # What every smoke relies on: a run that did not end exactly as expected stops the script.
    paired = _paired()
    ok = paired.Result("x", 1.0, 0.5, 0, "....\n4 passed in 0.12s\n")
    paired.expect(ok, {"passed": 4}, 0)
    collected = paired.Result("x", 1.0, 0.5, 0, "a::b\n\n7 tests collected in 0.01s\n")
    assert collected.collected() == 7
    for result, counts, code in (
        (paired.Result("x", 1.0, 0.5, 1, "3 passed, 1 failed in 0.12s\n"), {"passed": 4}, 0),
        (paired.Result("x", 1.0, 0.5, 0, "3 passed in 0.12s\n"), {"passed": 4}, 0),
        (paired.Result("x", 1.0, 0.5, 0, "4 passed, 1 error in 0.12s\n"), {"passed": 4}, 0),
        (paired.Result("x", 1.0, 0.5, 1, "2 failed in 0.12s\n"), {"failed": 2}, 0),
        (paired.Result("x", 9.0, 0.5, -9, "", timed_out=True), {"passed": 4}, 0),
    ):
        with pytest.raises(SystemExit):
            paired.expect(result, counts, code)


def test_paired_verdict_is_taken_per_round() -> None:
    paired = _paired()
    pairing = paired.Pairing("kit", "hand", [1.0, 2.0, 3.5], [1.5, 1.5, 3.0])
    assert pairing.differences == [-0.5, 0.5, 0.5]
    assert pairing.wins() == 1
    assert paired.spread(pairing.differences).startswith("0.500 (-0.500–0.500, IQR ")
    assert paired.rotate(["a", "b", "c"], 4) == ["b", "c", "a"]


def test_run_py_pairs_the_per_test_costs_by_round() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run
    finally:
        sys.path.remove(str(BENCHMARKS))
    n = 100

    def timings(full: list[float], cpu_full: list[float]) -> run.Timings:
        return run.Timings(full, [1.0] * 3, [1.01] * 3, cpu_full, [0.5] * 3)

    verdict = run.paired_verdict(
        {
            "K": timings([2.0, 2.1, 2.0], [1.5, 1.5, 1.5]),  # 10, 11, 10 ms per test
            "B": timings([2.2, 2.0, 2.3], [1.7, 1.7, 1.7]),  # 12, 10, 13 ms per test
            "F3": timings([1.95, 2.0, 2.0], [1.4, 1.4, 1.4]),
        },
        n,
        3,
    )
    assert verdict.count("| K | F3 |") == 2 and verdict.count("| K | B |") == 2, verdict
    wall = {
        line.split(" | ")[1]: line
        for line in verdict.split("per-test CPU")[0].splitlines()
        if line.startswith("| K |")
    }
    # K - B per round: 10 - 12, 11 - 10, 10 - 13 ms; K faster in rounds 1 and 3.
    assert wall["B"].startswith("| K | B | 10.000 | 12.000 | -2.000 (-3.000–1.000, IQR"), verdict
    assert wall["B"].endswith("| 2 of 3 |"), verdict
    # K - F3 per round: 10 - 9.5, 11 - 10, 10 - 10 ms; never below the floor.
    assert wall["F3"].startswith("| K | F3 | 10.000 | 10.000 | 0.500 (0.000–1.000"), verdict
    assert wall["F3"].endswith("| 0 of 3 |"), verdict
