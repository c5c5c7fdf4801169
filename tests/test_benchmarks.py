# ruff: noqa: RUF001  (the benchmarks' tables print the en dash)
"""The benchmark's smoke mode: every set-up's generated tests pass (correctness, not timing).

The generated tests check isolation (each lists exactly the rows it created), so running them
in pytest-randomly's order, with a fixed seed and with a fresh one, shows that isolation does
not depend on the order of the tests.
"""

from __future__ import annotations

import random
import subprocess
import sys
import types
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
SMOKE_TIMEOUT = 600


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        check=False,
    )


def run_smoke(*args: str) -> subprocess.CompletedProcess[str]:
    return run_script(RUNNER, "--smoke", *args)


def test_every_benchmark_setup_passes_its_smoke_run() -> None:
    completed = run_smoke()
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    for key in ("K", "B", "A", "C", "F0", "F1", "F2", "F3"):
        assert f"\n{key} " in f"\n{completed.stdout}", output
    assert "FAILED" not in completed.stdout, output


@pytest.mark.parametrize("seed", [12345, random.randrange(1, 2**31)], ids=["fixed", "fresh"])
def test_kit_and_recipe_benchmarks_pass_in_random_order(seed: int) -> None:
    completed = run_smoke("--only", "K,B,K-noleak", "--randomly-seed", str(seed))
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"--randomly-seed={seed}\n{output}"
    assert f"--randomly-seed={seed}" in completed.stdout, output
    assert completed.stdout.count(" ok (") == 3, output


def test_scale_script_runs_xdist_and_start_up() -> None:
    # Small: correctness of the script (both ways pass every test; both starts are timed),
    # not its timings.
    completed = run_script(RUNNER.with_name("scale.py"), "--n", "20", "--rounds", "1")
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "| `-n 0` |" in completed.stdout and "| `-n 2` |" in completed.stdout, output
    assert completed.stdout.count("| 20 |") == 2, output
    for start in ("| warm |", "| cold |"):
        assert start in completed.stdout, output


# The whole-suite benchmarks of issue 19: each script's --smoke runs every set-up once, with
# few tests and no warm-up, and exits non-zero unless each run ended as it must (all passed,
# all failed, all collected). Correctness only: no timing is asserted.
BENCHMARKS = RUNNER.parent


@pytest.mark.timeout(SMOKE_TIMEOUT)
def test_fixed_cost_script_runs_every_setup_and_profiles() -> None:
    completed = run_script(BENCHMARKS / "fixed_cost.py", "--smoke", "--profile")
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "smoke: every set-up passed with 0 and 1 test(s)" in completed.stdout, output
    for setup in ("K-emb", "K-conf"):
        for count in (0, 1):
            assert completed.stdout.count(f"| {setup}, {count} test(s) | B |") == 2, output
    # The profile's three parts: phases of each set-up, the kit's own imports, cProfile.
    assert "| unconfigure (kit: drop databases, stop server) |" in completed.stdout, output
    assert "| total |" in completed.stdout, output
    assert completed.stdout.count("pytest_load_initial_conftests") >= 2, output


@pytest.mark.timeout(SMOKE_TIMEOUT)
def test_suites_script_passes_every_suite_every_way() -> None:
    completed = run_script(BENCHMARKS / "suites.py", "--smoke")
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "smoke: every way of small, api40, generated passed" in completed.stdout, output
    for suite in ("small", "api40", "generated"):
        assert f"### {suite}:" in completed.stdout, output
    for way in ("kit-emb", "kit-conf"):
        assert completed.stdout.count(f"| {way} | hand |") == 6, output  # 3 suites, wall and CPU


@pytest.mark.timeout(SMOKE_TIMEOUT)
def test_failures_script_fails_every_test_with_and_without_the_kit() -> None:
    completed = run_script(BENCHMARKS / "failures.py", "--smoke")
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "smoke: every run failed exactly as expected" in completed.stdout, output
    for flavor in ("api", "plain"):
        for tb in ("auto", "no"):
            assert completed.stdout.count(f"| {flavor}, kit, --tb={tb} | no kit |") == 2, output


@pytest.mark.timeout(SMOKE_TIMEOUT)
def test_collection_script_collects_every_test_every_way() -> None:
    completed = run_script(BENCHMARKS / "collection.py", "--smoke")
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "smoke: every way collected 100 tests" in completed.stdout, output
    for way in ("kit", "asyncio"):
        assert completed.stdout.count(f"| {way} | anyio |") == 2, output


def _paired() -> types.ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import paired
    finally:
        sys.path.remove(str(BENCHMARKS))
    return paired


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
