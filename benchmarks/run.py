"""Benchmark anyio-fastapi-testkit against the usual hand-written set-ups, side by side.

    python benchmarks/run.py [--n 300] [--rounds 3] [--memory] [--only K,B,...] [--smoke]

One PostgreSQL server (started with the kit's own ``_server.start_server``) is shared by all
set-ups; each set-up has a database of its own on it. Every set-up runs as a separate
``python -m pytest`` process on a generated project (see generate.py), in interleaved order,
``--rounds`` times. Per round and set-up three runs are timed: N tests, no tests, one test.

* per-test cost = (wall of N tests - wall with no tests) / N  (the issue's definition; fixed
  costs that only happen when a test runs, such as a session engine or create_all, are
  spread over the N tests)
* marginal cost = (wall of N tests - wall of 1 test) / (N - 1)  (fixed costs excluded)

Medians over the rounds are printed as a markdown table with the ratios, and the paired verdict.
``--smoke`` runs every set-up once with 5 tests (two at a time), checks that they pass and
exits non-zero otherwise; it makes no timing claims.

The smokes of every script here (``tests/test_benchmarks.py``) can share what is slow to make:
with ``--smoke``, ``$BENCH_SMOKE_SERVER_URL`` (an admin URL) is the server to use instead of
starting one, and ``$BENCH_SMOKE_KIT_STATE`` (a folder) is the TMPDIR of the kit's embedded-server
runs, with the pytest cache folder ``.pytest_cache`` inside it, so that every project's run
uses one cached cluster (see ``smoke_server_url`` and ``smoke_kit_state``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "sample_app"))

from generate import BY_KEY, RSS_PLUGIN, SETUPS, Setup, database_name, generate  # noqa: E402

DEFAULT_N = 300
SMOKE_N = 5  # more than one: the isolation check needs a test that ran before it
SMOKE_SERVER_ENV = "BENCH_SMOKE_SERVER_URL"
SMOKE_KIT_STATE_ENV = "BENCH_SMOKE_KIT_STATE"
MEMORY_NS = (300, 1000)
MEMORY_SETUPS = ("K", "B", "F3")
RUN_TIMEOUT = 900.0

# The per-test targets are those of issue 19 (item 4), judged by the paired verdict
# (PAIRED_TARGETS). They superseded the first plan's ratio targets against F3, B, A and C,
# which only a kit below the floor could meet.

# --- the server and the databases --------------------------------------------------------------


def smoke_server_url(smoke: bool) -> str | None:
    """With ``--smoke``: the server every script's smoke shares (``$BENCH_SMOKE_SERVER_URL``),
    if given. Never in a measured run: the server's CPU time is only known for a server of
    the bench's own."""
    return (os.environ.get(SMOKE_SERVER_ENV) or None) if smoke else None


def smoke_kit_state(smoke: bool) -> Path | None:
    """With ``--smoke``: the TMPDIR that the kit's embedded-server runs of every script's
    smoke share (``$BENCH_SMOKE_KIT_STATE``), if given; see ``embedded_cache_args``."""
    folder = os.environ.get(SMOKE_KIT_STATE_ENV) if smoke else None
    return Path(folder) if folder else None


def embedded_cache_args(shared_state: Path | None) -> list[str]:
    """pytest options of a run of the kit's embedded server: with a shared state folder, one
    pytest cache folder for every project, so that they all use one cached cluster (the kit
    keeps a cluster per pytest cache folder) instead of an initdb per project."""
    if shared_state is None:
        return []
    return ["-o", f"cache_dir={shared_state / '.pytest_cache'}"]


class Server:
    """One PostgreSQL server for all set-ups, with a database per set-up.

    ``url``: use that server (an admin URL; see ``smoke_server_url``) instead of starting one;
    its CPU time is then not measured (``cpu_seconds`` is 0)."""

    def __init__(self, url: str | None = None) -> None:
        from anyio_fastapi_testkit._postgres.server import start_server

        self.running = start_server(url)
        self.admin_url = self.running.info.admin_url  # driver "postgresql", db "postgres"
        self.version = self.running.info.description

    def url(self, database: str, driver: str | None) -> str:
        drivername = f"postgresql+{driver}" if driver else "postgresql"
        return self.admin_url.set(drivername=drivername, database=database).render_as_string(
            hide_password=False
        )

    def prepare(self, setups: list[Setup]) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres", None), autocommit=True) as conn:
            for setup in setups:
                if not setup.database:
                    continue
                name = database_name(setup)
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        for setup in setups:
            if setup.tables:
                self._create_tables(database_name(setup))

    def _create_tables(self, database: str) -> None:
        from benchapp.models import Base
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        engine = create_engine(self.url(database, "psycopg"), poolclass=NullPool)
        try:
            with engine.begin() as conn:
                Base.metadata.create_all(conn)
        finally:
            engine.dispose()

    def cpu_seconds(self) -> float:
        """CPU time of the postmaster and of its children that have exited (backends)."""
        state_dir = self.running.state_dir
        if state_dir is None:
            return 0.0
        try:
            pid = int((state_dir / "data" / "postmaster.pid").read_text().split()[0])
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return 0.0
        # utime, stime, cutime, cstime are fields 14-17 of stat(5); [0] here is field 3.
        return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.running.stop()


# --- running one pytest process -------------------------------------------------------------


@dataclass
class Project:
    setup: Setup
    n: int
    path: Path


@dataclass
class Run:
    setup: str
    n: int
    seconds: float
    ok: bool
    detail: str = ""
    rss_kib: int | None = None
    cpu: float = 0.0  # user + system seconds of the pytest process
    server_cpu: float = 0.0  # CPU seconds of the server's backends that ended meanwhile


def pytest_command(setup: Setup, server: Server, driver: str) -> list[str]:
    args = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-q"]
    if setup.runner == "kit":
        args += ["-p", "no:asyncio", "--testkit-db-url", server.url(database_name(setup), None)]
        if driver != "psycopg":
            args += ["-o", f"testkit_database_driver={driver}"]
    else:
        args += ["-p", "no:anyio_fastapi_testkit.plugin"]
        if setup.runner == "anyio":
            args += ["-p", "no:asyncio"]
    return args


def child_env(setup: Setup, server: Server, driver: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in (
            "PYTEST_ADDOPTS",
            "PYTEST_PLUGINS",
            "TESTKIT_DATABASE_URL",
            "DATABASE_URL",
            # Without bytecode, pytest re-rewrites every test module's asserts on every run
            # (several ms per test here), which would swamp the fixtures' costs: let the
            # untimed warm-up write the caches that every timed run then uses.
            "PYTHONDONTWRITEBYTECODE",
        )
        and not key.startswith("BENCH_")
    }
    if setup.database:
        env["BENCH_DATABASE_URL"] = server.url(database_name(setup), driver)
    return env


def run_pytest(
    project: Project,
    server: Server,
    driver: str,
    *extra: str,
    rss_file: Path | None = None,
    settle: float = 0.1,
) -> Run:
    """One pytest process of ``project``. ``settle``: seconds to give the server, after the
    run, to reap the run's backends, whose CPU time it then holds (0: no server CPU wanted)."""
    setup = project.setup
    env = child_env(setup, server, driver)
    args = pytest_command(setup, server, driver) + list(extra)
    if rss_file is not None:
        env["BENCH_RSS_FILE"] = str(rss_file)
        args += ["-p", RSS_PLUGIN]
    server_cpu = server.cpu_seconds()
    start = time.perf_counter()
    process = subprocess.Popen(
        args, cwd=project.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    timer = threading.Timer(RUN_TIMEOUT, process.kill)
    timer.start()
    try:
        assert process.stdout is not None
        output = process.stdout.read().decode(errors="replace")
        # wait4, not wait: the child's own CPU time comes with its exit status.
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
        if process.stdout is not None:
            process.stdout.close()
    seconds = time.perf_counter() - start
    process.returncode = returncode = os.waitstatus_to_exitcode(status)
    time.sleep(settle)
    server_cpu = server.cpu_seconds() - server_cpu
    cpu = usage.ru_utime + usage.ru_stime
    if seconds >= RUN_TIMEOUT:
        return Run(setup.key, project.n, seconds, False, f"timed out after {RUN_TIMEOUT:g} s")
    if "--collect-only" in extra:
        ok = returncode in (0, 5)
    elif project.n == 0:
        ok = returncode == 5 and "no tests ran" in output
    else:
        passed = re.search(r"(\d+) passed", output)
        ok = (
            returncode == 0
            and passed is not None
            and int(passed.group(1)) == project.n
            and not re.search(r"\d+ (failed|error|skipped)", output)
        )
    rss = None
    if rss_file is not None and rss_file.is_file():
        rss = int(rss_file.read_text())
    detail = "" if ok else f"exit {returncode}\n{output[-4000:]}"
    return Run(setup.key, project.n, seconds, ok, detail, rss, cpu, server_cpu)


# --- the benchmark ------------------------------------------------------------------------------


@dataclass
class Timings:
    full: list[float] = field(default_factory=list)  # N tests
    empty: list[float] = field(default_factory=list)  # no tests
    one: list[float] = field(default_factory=list)  # one test
    cpu_full: list[float] = field(default_factory=list)  # pytest + server CPU, N tests
    cpu_empty: list[float] = field(default_factory=list)  # pytest + server CPU, no tests

    def per_test_ms(self, n: int) -> list[float]:
        return [(f - e) / n * 1000 for f, e in zip(self.full, self.empty, strict=True)]

    def cpu_per_test_ms(self, n: int) -> list[float]:
        return [(f - e) / n * 1000 for f, e in zip(self.cpu_full, self.cpu_empty, strict=True)]

    def marginal_ms(self, n: int) -> list[float]:
        return [(f - o) / (n - 1) * 1000 for f, o in zip(self.full, self.one, strict=True)]


def fail(run: Run) -> None:
    print(f"\nset-up {run.setup} with {run.n} tests FAILED ({run.detail})", file=sys.stderr)
    raise SystemExit(1)


def benchmark(
    setups: list[Setup], server: Server, base: Path, n: int, rounds: int, driver: str
) -> dict[str, Timings]:
    projects: dict[tuple[str, int], Project] = {}
    for setup in setups:
        for count in (n, 0, 1):
            path = generate(setup, count, base / f"{setup.key}-n{count}")
            projects[setup.key, count] = Project(setup, count, path)
    # Not timed: byte-compile the app and the (assertion-rewritten) tests, warm the caches.
    for setup in setups:
        for count in (n, 1):
            warm = run_pytest(projects[setup.key, count], server, driver, "--collect-only")
            if not warm.ok:
                fail(warm)
    timings = {setup.key: Timings() for setup in setups}
    for round_index in range(rounds):
        # Interleaved: every round runs every set-up, starting one further along each time.
        shift = round_index % len(setups)
        order = setups[shift:] + setups[:shift]
        print(f"round {round_index + 1}/{rounds}: ", end="", file=sys.stderr, flush=True)
        for setup in order:
            for count, bucket in ((n, "full"), (0, "empty"), (1, "one")):
                run = run_pytest(projects[setup.key, count], server, driver)
                if not run.ok:
                    fail(run)
                getattr(timings[setup.key], bucket).append(run.seconds)
                if bucket != "one":
                    getattr(timings[setup.key], f"cpu_{bucket}").append(run.cpu + run.server_cpu)
            print(
                f"{setup.key} {timings[setup.key].full[-1]:.1f}s ",
                end="",
                file=sys.stderr,
                flush=True,
            )
        print(file=sys.stderr)
    return timings


def memory(
    setups: list[Setup], server: Server, base: Path, rounds: int, driver: str
) -> dict[str, dict[int, list[int]]]:
    result: dict[str, dict[int, list[int]]] = {}
    for setup in setups:
        result[setup.key] = {count: [] for count in MEMORY_NS}
    projects = {
        (setup.key, count): Project(
            setup, count, generate(setup, count, base / f"mem-{setup.key}-n{count}")
        )
        for setup in setups
        for count in MEMORY_NS
    }
    for round_index in range(rounds):
        print(f"memory round {round_index + 1}/{rounds}", file=sys.stderr, flush=True)
        for setup in setups:
            for count in MEMORY_NS:
                rss_file = base / f"rss-{setup.key}-{count}.txt"
                rss_file.unlink(missing_ok=True)
                run = run_pytest(projects[setup.key, count], server, driver, rss_file=rss_file)
                if not run.ok or run.rss_kib is None:
                    fail(run)
                result[setup.key][count].append(run.rss_kib)
    return result


# --- reporting ----------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _fmt(value: float, digits: int = 2) -> str:
    return "—" if value != value else f"{value:.{digits}f}"


def report(
    setups: list[Setup], timings: dict[str, Timings], n: int, rounds: int
) -> tuple[str, dict[str, dict[str, float]]]:
    stats: dict[str, dict[str, float]] = {}
    for setup in setups:
        t = timings[setup.key]
        per_test = t.per_test_ms(n)
        stats[setup.key] = {
            "wall_n": _median(t.full),
            "wall_0": _median(t.empty),
            "wall_1": _median(t.one),
            "per_test_ms": _median(per_test),
            "per_test_min": min(per_test),
            "per_test_max": max(per_test),
            "marginal_ms": _median(t.marginal_ms(n)),
            "cpu_per_test_ms": _median(t.cpu_per_test_ms(n)),
            # Load from other processes only ever slows a run down: the fastest runs are the
            # least disturbed ones.
            "best_per_test_ms": (min(t.full) - min(t.empty)) / n * 1000,
        }
    f3 = stats.get("F3", {}).get("per_test_ms", float("nan"))
    k = stats.get("K", {}).get("per_test_ms", float("nan"))
    lines = [
        f"N = {n} tests, {rounds} round(s), medians. per-test = (wall N − wall 0 tests) / N; "
        "marginal = (wall N − wall 1 test) / (N − 1); CPU = the same as per-test, on the CPU "
        "time of the pytest process plus the server's backends instead of wall time; best = "
        "(fastest N-test run − fastest 0-test run) / N.",
        "",
        f"| set-up | what | wall {n} tests (s) | wall 0 tests (s) | per-test (ms) | "
        "per-test min–max (ms) | marginal (ms) | CPU per test (ms) | best per test (ms) | "
        "÷ F3 | ÷ K |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for setup in setups:
        s = stats[setup.key]
        lines.append(
            f"| {setup.key} | {setup.title} | {_fmt(s['wall_n'])} | {_fmt(s['wall_0'])} | "
            f"{_fmt(s['per_test_ms'])} | {_fmt(s['per_test_min'])}–{_fmt(s['per_test_max'])} | "
            f"{_fmt(s['marginal_ms'])} | {_fmt(s['cpu_per_test_ms'])} | "
            f"{_fmt(s['best_per_test_ms'])} | "
            f"{_fmt(s['per_test_ms'] / f3)} | {_fmt(s['per_test_ms'] / k)} |"
        )
    return "\n".join(lines), stats


# (subject, reference, what the issue asks of the pair). The floor is "the app's own work
# with every fixture built once" (issue 19); since issue 17 the app's own work includes a
# session per request, as in production (design principle 3), which is F4. F3 shares one
# session across a test's requests: below any app with a session per request, shown for
# reference.
PAIRED_TARGETS = (
    ("K", "F4", "median paired difference ≤ 0.5 ms per test (the floor)"),
    ("K", "F3", "for reference: a floor that shares one session across requests"),
    ("K", "B", "K faster than B in ≥ 8 of 9 rounds"),
)


def paired_verdict(timings: dict[str, Timings], n: int, rounds: int) -> str:
    """The per-test costs paired by round (every round runs every set-up): the median over the
    rounds of the per-round difference and ratio, their spread, and the rounds K won."""
    import paired

    blocks = []
    for what, per_test in (
        ("per-test wall", Timings.per_test_ms),
        ("per-test CPU", Timings.cpu_per_test_ms),
    ):
        pairings = [
            paired.Pairing(
                subject,
                reference,
                per_test(timings[subject], n),
                per_test(timings[reference], n),
            )
            for subject, reference, _ in PAIRED_TARGETS
            if subject in timings and reference in timings
        ]
        if pairings:
            blocks.append(paired.paired_table(pairings, what, "ms"))
    if not blocks:
        return ""
    targets = "; ".join(
        f"{subject} against {reference}: {text}" for subject, reference, text in PAIRED_TARGETS
    )
    return "\n".join(
        [
            f"Paired verdict ({rounds} rounds; each round runs every set-up, so the per-test "
            "costs of one round are compared with each other):",
            "",
            blocks[0],
            "",
            *(blocks[1:] and [blocks[1], ""]),
            f"Targets (issue 19, item 4): {targets}.",
        ]
    )


def memory_report(result: dict[str, dict[int, list[int]]]) -> str:
    low, high = MEMORY_NS
    lines = [
        f"| set-up | peak RSS {low} tests (MiB) | peak RSS {high} tests (MiB) | growth (MiB) | "
        "growth per test (KiB) |",
        "|---|--:|--:|--:|--:|",
    ]
    for key, by_n in result.items():
        a, b = _median(by_n[low]), _median(by_n[high])
        lines.append(
            f"| {key} | {a / 1024:.1f} | {b / 1024:.1f} | {(b - a) / 1024:.1f} | "
            f"{(b - a) / (high - low):.1f} |"
        )
    return "\n".join(lines)


def machine(server: Server) -> str:
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
        f"Python {platform.python_version()}, {server.version.split(' (')[0]}"
    )


# --- smoke --------------------------------------------------------------------------------------


def smoke(
    setups: list[Setup], server: Server, base: Path, driver: str, seed: int | None = None
) -> int:
    projects = [
        Project(setup, SMOKE_N, generate(setup, SMOKE_N, base / f"{setup.key}-n{SMOKE_N}"))
        for setup in setups
    ]
    # pytest-randomly shuffles modules and tests with this seed: isolation must not depend
    # on the order (-p after -p no: unblocks the plugin).
    extra = ("-p", "randomly", f"--randomly-seed={seed}") if seed is not None else ()
    if seed is not None:
        print(f"random order: --randomly-seed={seed}")
    failures = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        # settle=0: a smoke reports no CPU time.
        runs = pool.map(lambda p: run_pytest(p, server, driver, *extra, settle=0), projects)
        for run in runs:
            status = "ok" if run.ok else "FAILED"
            print(f"{run.setup:<11} {SMOKE_N} tests {status} ({run.seconds:.1f} s)")
            if not run.ok:
                failures += 1
                print(run.detail, file=sys.stderr)
    return 1 if failures else 0


# --- main ---------------------------------------------------------------------------------------


def select(only: str | None) -> list[Setup]:
    if not only:
        return [s for s in SETUPS if not s.extra]
    keys = [key.strip() for key in only.split(",") if key.strip()]
    unknown = [key for key in keys if key not in BY_KEY]
    if unknown:
        raise SystemExit(f"unknown set-up(s) {unknown}; known: {', '.join(BY_KEY)}")
    return [BY_KEY[key] for key in keys]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark anyio-fastapi-testkit against hand-written set-ups."
    )
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="tests per run (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--memory",
        action="store_true",
        help=f"also measure peak RSS growth from {MEMORY_NS[0]} to {MEMORY_NS[1]} tests "
        f"for {', '.join(MEMORY_SETUPS)} (slow)",
    )
    parser.add_argument(
        "--only",
        help="comma-separated set-ups, e.g. K,B,F3; default: "
        + ",".join(s.key for s in SETUPS if not s.extra)
        + "; extras: "
        + ",".join(s.key for s in SETUPS if s.extra),
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"every set-up once with {SMOKE_N} tests; only check that they pass",
    )
    parser.add_argument(
        "--randomly-seed",
        type=int,
        help="with --smoke: run the tests in pytest-randomly's order for this seed",
    )
    parser.add_argument("--driver", choices=("psycopg", "asyncpg"), default="psycopg")
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    parser.add_argument("--keep", action="store_true", help="keep the generated projects")
    args = parser.parse_args(argv)
    if args.n < 2 or args.rounds < 1:
        parser.error("--n must be at least 2 and --rounds at least 1")

    setups = select(args.only)
    base = Path(tempfile.mkdtemp(prefix="anyio-fastapi-testkit-bench-"))
    started = time.perf_counter()
    server = Server(smoke_server_url(args.smoke))
    try:
        server.prepare(setups)
        if args.smoke:
            code = smoke(setups, server, base, args.driver, args.randomly_seed)
            print(
                f"smoke: {'passed' if code == 0 else 'FAILED'} in "
                f"{time.perf_counter() - started:.1f} s"
            )
            return code
        print(f"machine: {machine(server)}", file=sys.stderr)
        timings = benchmark(setups, server, base, args.n, args.rounds, args.driver)
        table, stats = report(setups, timings, args.n, args.rounds)
        print()
        print(f"Machine: {machine(server)}; driver {args.driver}.")
        print()
        print(table)
        verdict = paired_verdict(timings, args.n, args.rounds)
        if verdict:
            print()
            print(verdict)
        raw: dict[str, object] = {
            "n": args.n,
            "rounds": args.rounds,
            "driver": args.driver,
            "machine": machine(server),
            "timings": {key: vars(t) for key, t in timings.items()},
            "stats": stats,
        }
        mem_setups = [BY_KEY[key] for key in MEMORY_SETUPS if key in {s.key for s in setups}]
        if args.memory and mem_setups:
            result = memory(mem_setups, server, base, args.rounds, args.driver)
            print()
            print(f"Peak RSS of the pytest process ({args.rounds} round(s), medians):")
            print()
            print(memory_report(result))
            raw["memory_kib"] = result
        if args.json:
            args.json.write_text(json.dumps(raw, indent=2))
        print(f"\n(total {time.perf_counter() - started:.0f} s)", file=sys.stderr)
        return 0
    finally:
        server.stop()
        if args.keep:
            print(f"projects kept in {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
