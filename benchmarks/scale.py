"""Scale and start-up of the kit: pytest-xdist against one process, cold and warm starts.

    python benchmarks/scale.py [--n 2000] [--rounds 2] [--only xdist,start] [--smoke]

* ``xdist``: the bench's K project with N tests, run with ``-n 0`` and with ``-n 2`` against
  one server (``--testkit-db-url``, as run.py does), interleaved, ``--rounds`` times; wall time
  of the pytest process, the speed-up, and the pass counts (which must be N both ways). Also
  the CPU seconds each run used: of the pytest processes (with ``-n 2``: the controller and
  both workers) and of the server. On two cores a run takes at least half its CPU seconds,
  so this shows how much of the speed-up the extra work of ``-n 2`` leaves.
* ``start``: how long the database takes to be ready in a session with the kit's embedded
  server: the set-up time of the first test that uses ``db_session`` (``--durations``), with
  the cluster and template cached by an earlier run (warm) and with ``--testkit-fresh-db``
  (cold: initdb, start, schema, template, clone).

``--smoke``: 10 tests, one round, no untimed warm-up runs (so the "warm" start may be the one
that caches the cluster); every run must pass all its tests. Of ``xdist`` only the ``-n 2``
run, so no speed-up: a ``-n 0`` run is set-up K run in one process, as ``run.py --smoke``
does. The bench server and the kit's cached cluster are those of ``$BENCH_SMOKE_SERVER_URL``
and ``$BENCH_SMOKE_KIT_STATE`` if given (see run.py); the cold start makes its own cluster, as
always.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "sample_app"))

import run  # noqa: E402
from generate import BY_KEY, generate  # noqa: E402

RUN_TIMEOUT = 900.0
SMOKE_N = 10

DATABASE_TEST = """
from sqlalchemy import text


async def test_database(db_session):
    assert (await db_session.execute(text("SELECT 1"))).scalar() == 1
"""


def _timed(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str, int]:
    start = time.perf_counter()
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    return time.perf_counter() - start, done.stdout + done.stderr, done.returncode


def _children_cpu() -> float:
    """CPU seconds of the ended child processes, and of theirs (pytest-xdist's workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(server: run.Server) -> float | None:
    """CPU seconds of the PostgreSQL server so far: the postmaster, its ended backends and
    its live processes (Linux /proc; None elsewhere)."""
    state_dir = server.running.state_dir
    try:
        assert state_dir is not None
        pid = int((state_dir / "data" / "postmaster.pid").read_text().split()[0])
        tick = os.sysconf("SC_CLK_TCK")

        def fields(process: int) -> list[str]:
            stat = Path(f"/proc/{process}/stat").read_text()
            return stat[stat.rindex(")") + 2 :].split()

        own = fields(pid)  # utime, stime, cutime, cstime are fields 14-17 (index 11-14 here)
        total = sum(int(value) for value in own[11:15])
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError):  # ended meanwhile: then in the cutime
                total += sum(int(value) for value in fields(int(child))[11:13])
        return total / tick
    except (AssertionError, OSError, ValueError, IndexError):
        return None


def _passed(output: str) -> int:
    found = re.search(r"(\d+) passed", output)
    return int(found.group(1)) if found else 0


def xdist(base: Path, n: int, rounds: int, smoke: bool = False) -> str:
    setup = BY_KEY["K"]
    server = run.Server(run.smoke_server_url(smoke))
    try:
        server.prepare([setup])
        project = generate(setup, n, base / f"K-n{n}")
        env = run.child_env(setup, server, "psycopg")
        command = run.pytest_command(setup, server, "psycopg")
        if not smoke:  # not timed: byte-compile the tests and warm the caches
            _timed([*command, "--collect-only"], project, env)
        ways = ("2",) if smoke else ("0", "2")  # a smoke's -n 0 would be run.py's K
        walls: dict[str, list[float]] = {"0": [], "2": []}
        pytest_cpu: dict[str, list[float]] = {"0": [], "2": []}
        server_cpu: dict[str, list[float]] = {"0": [], "2": []}
        passed: dict[str, set[int]] = {"0": set(), "2": set()}
        for round_index in range(rounds):
            order = ("0", "2") if round_index % 2 == 0 else ("2", "0")
            for workers in (w for w in order if w in ways):
                cpu_before, server_before = _children_cpu(), _server_cpu(server)
                seconds, output, code = _timed([*command, "-n", workers], project, env)
                if code != 0 or (smoke and _passed(output) != n):
                    raise SystemExit(f"-n {workers} failed (exit {code}):\n{output[-3000:]}")
                server_after = _server_cpu(server)
                walls[workers].append(seconds)
                pytest_cpu[workers].append(_children_cpu() - cpu_before)
                if server_before is not None and server_after is not None:
                    server_cpu[workers].append(server_after - server_before)
                passed[workers].add(_passed(output))
                print(f"-n {workers}: {seconds:.1f} s", file=sys.stderr, flush=True)
    finally:
        server.stop()
    medians = {workers: statistics.median(walls[workers]) for workers in ways}
    lines = [
        f"{n} bench tests (set-up K), {rounds} interleaved rounds, medians:",
        "",
        "| run | wall (s), each round | median (s) | CPU of pytest (s) | CPU of the server (s) "
        "| passed |",
        "|---|---|--:|--:|--:|--:|",
    ]
    cpu_totals: dict[str, float] = {}
    for workers, median in medians.items():
        each = ", ".join(f"{value:.1f}" for value in walls[workers])
        counts = ", ".join(str(value) for value in sorted(passed[workers]))
        own = statistics.median(pytest_cpu[workers])
        theirs = statistics.median(server_cpu[workers]) if server_cpu[workers] else None
        cpu_totals[workers] = own + (theirs or 0.0)
        shown = f"{theirs:.1f}" if theirs is not None else "n/a"
        lines.append(f"| `-n {workers}` | {each} | {median:.1f} | {own:.1f} | {shown} | {counts} |")
    if "0" not in medians:  # a smoke's: nothing to compare with
        return "\n".join(lines)
    serial, parallel = medians["0"], medians["2"]
    speedup = f"{serial / parallel:.2f}"
    extra = cpu_totals["2"] / cpu_totals["0"] if cpu_totals["0"] else float("nan")
    # On two cores the -n 2 run cannot take less than half its CPU seconds.
    bound = serial / (cpu_totals["2"] / 2) if cpu_totals["2"] else float("nan")
    lines += [
        "",
        f"`-n 2` is {speedup} times as fast as `-n 0` (target: at least 1.5).",
        f"`-n 2` used {extra:.2f} times the CPU seconds of `-n 0` (a second start-up and "
        "collection, the controller, contention): on 2 cores that caps its speed-up near "
        f"{bound:.2f}.",
    ]
    return "\n".join(lines)


def _start_project(base: Path, name: str, test_source: str) -> Path:
    project = generate(BY_KEY["K"], 0, base / name)
    (project / "tests" / "test_start.py").write_text(test_source)
    # Without testkit_database_env, which would provision the database before collection in
    # the baseline too: benchapp's import-time engine never connects, the session dependency
    # being the kit's.
    ini = (project / "pytest.ini").read_text().splitlines()
    kept = [line for line in ini if not line.startswith("testkit_database_env")]
    (project / "pytest.ini").write_text("\n".join(kept) + "\n")
    return project


def _setup_seconds(output: str, test: str) -> float:
    found = re.search(rf"([0-9.]+)s setup\s+\S*::{test}", output)
    if found is None:
        raise SystemExit(f"no setup duration of {test} in:\n{output[-3000:]}")
    return float(found.group(1))


def start(base: Path, rounds: int, smoke: bool = False) -> str:
    # The kit's own embedded server and cache, in a state folder of this run's own: the cold
    # runs start from nothing, the warm runs reuse what the untimed first run cached.
    env = {key: value for key, value in os.environ.items() if not key.startswith("BENCH_")}
    for key in ("TESTKIT_DATABASE_URL", "DATABASE_URL", "PYTEST_ADDOPTS"):
        env.pop(key, None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    shared = run.smoke_kit_state(smoke)
    # Short: the server's socket is in it.
    state = str(shared) if shared else tempfile.mkdtemp(prefix="tks-", dir="/tmp")
    env["TMPDIR"] = state
    try:
        return _time_starts(base, rounds, env, smoke, run.embedded_cache_args(shared))
    finally:
        if shared is None:  # a shared one is its owner's to remove
            shutil.rmtree(state, ignore_errors=True)  # the cached cluster and template


def _time_starts(
    base: Path,
    rounds: int,
    env: dict[str, str],
    smoke: bool = False,
    options: list[str] | None = None,
) -> str:
    command = [
        *(sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:asyncio", "-q"),
        *("--durations=0", "--durations-min=0", *(options or [])),
    ]
    database = _start_project(base, "start-db", DATABASE_TEST)
    if not smoke:  # not timed: byte-compile, cache the cluster and template
        _timed(command, database, env)
    setups: dict[str, list[float]] = {"warm": [], "cold": []}
    for _ in range(rounds):
        for name, extra in (("warm", []), ("cold", ["--testkit-fresh-db"])):
            _, output, code = _timed([*command, *extra], database, env)
            if code != 0 or _passed(output) != 1:
                raise SystemExit(f"{name} start failed (exit {code}):\n{output[-3000:]}")
            setups[name].append(_setup_seconds(output, "test_database"))
            print(f"{name}: {setups[name][-1]:.2f} s", file=sys.stderr, flush=True)
    lines = [
        f"Start of the database with the embedded server, {rounds} rounds: the set-up time of",
        "the session's first database test (pytest --durations), which starts the server,",
        "gets the template (built, or cached by an earlier run) and the worker's clone, and",
        "connects:",
        "",
        "| start | each round (s) | median (s) | target |",
        "|---|---|--:|---|",
    ]
    targets = {
        "warm": "≤ 0.4 s (cached cluster and template)",
        "cold": "≤ 1.5 s (initdb, start, schema, template, clone: --testkit-fresh-db)",
    }
    for name, values in setups.items():
        each = ", ".join(f"{value:.2f}" for value in values)
        lines.append(f"| {name} | {each} | {statistics.median(values):.2f} | {targets[name]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="tests of the xdist runs")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--only", default="xdist,start", help="xdist, start or both")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"{SMOKE_N} tests, one round, no warm-up: every run passes (no timing claim)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.rounds = SMOKE_N, 1
    chosen = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = chosen - {"xdist", "start"}
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; choose xdist and/or start")
    base = Path(tempfile.mkdtemp(prefix="tkscale-"))
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    try:
        if "xdist" in chosen:
            print(xdist(base, args.n, args.rounds, args.smoke), "\n")
        if "start" in chosen:
            print(start(base, 1 if args.smoke else max(args.rounds, 3), args.smoke))
        if args.smoke:
            print(f"\nsmoke: every run passed ({', '.join(sorted(chosen))})")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
