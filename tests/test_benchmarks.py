"""The benchmark's smoke mode: every set-up's generated tests pass (correctness, not timing).

The generated tests check isolation (each lists exactly the rows it created), so running them
in pytest-randomly's order, with a fixed seed and with a fresh one, shows that isolation does
not depend on the order of the tests.
"""

from __future__ import annotations

import random
import subprocess
import sys
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
