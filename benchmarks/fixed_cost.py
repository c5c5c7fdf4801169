# ruff: noqa: RUF001, RUF002, RUF003  (the printed tables use ×, − and the en dash)
"""The kit's fixed cost per run, against the hand-written recipe, and where it goes.

    python benchmarks/fixed_cost.py [--rounds 9] [--profile] [--smoke]

Set-ups (the generated bench app, ``benchapp``; each project's test module imports the app at
module level, so that the app's import is paid in every run, with or without tests):

* ``K-emb``: the kit, ini settings only (set-up K of run.py), on its embedded server with the
  cluster cache warm (an untimed first run builds it; the kit's state folder is a private
  TMPDIR of this script, deleted at the end);
* ``K-conf``: the same on the bench's server (``--testkit-db-url``), as a configured server;
* ``B``: the hand-written savepoint recipe (set-up B of run.py) on the bench's server.

Each round runs, back to back in a rotating order, every set-up with 0 tests and with 1 test.
Printed: the paired verdict per run size (median over rounds of the per-round difference
K − B and ratio K / B, with spread) on wall time and on CPU time (see paired.py for what CPU
time covers). Target 1 of issue 19: K − B ≤ 0.1 s.

``--profile`` adds, for a 1-test run of K-emb, K-conf and B: the timestamps of the run's
phases (``bench_marks`` plugin), the modules only the kit's run imports (``-X importtime``),
and the kit's functions that take the most time in a cProfile of the run.

``--smoke``: one round, no warm-up; with ``--profile``, each set-up's 1-test run is one run
with all of its profile's instruments at once (phases, imports, cProfile), instead of a plain
run and a run per instrument. With the bench server and the kit's cached cluster of
``$BENCH_SMOKE_SERVER_URL`` and ``$BENCH_SMOKE_KIT_STATE`` if given (see run.py).
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "sample_app"))

import paired  # noqa: E402
import run  # noqa: E402
from generate import BY_KEY, database_name, generate  # noqa: E402

IMPORT_APP = (
    '"""Imports the app at collection, as most suites do."""\n\n'
    "import benchapp.main  # noqa: F401\n"
)
SETUPS = ("K-emb", "K-conf", "B")
COUNTS = (0, 1)
PHASES = (
    ("start → pytest and -p plugins imported", "launch", "plugin_imported"),
    ("→ other plugins loaded, options parsed", "plugin_imported", "initial_conftests_start"),
    (
        "initial conftests (kit: database before collection; B: conftest.py, app import)",
        "initial_conftests_start",
        "initial_conftests_end",
    ),
    ("→ configure", "initial_conftests_end", "configure_first"),
    ("configure (all plugins)", "configure_first", "configure_last"),
    ("configure → collection", "configure_last", "collection_start"),
    ("collection (app import in the test module)", "collection_start", "collection_end"),
    ("test loop", "runtestloop_start", "runtestloop_end"),
    ("sessionfinish", "sessionfinish_start", "sessionfinish_end"),
    ("sessionfinish → unconfigure", "sessionfinish_end", "unconfigure_first"),
    ("unconfigure (kit: drop databases, stop server)", "unconfigure_first", "unconfigure_last"),
    ("unconfigure → exit handlers done", "unconfigure_last", "atexit"),
    ("exit handlers → process gone", "atexit", "exit"),
)


class Bench:
    """The projects, the bench's server and how each set-up is run."""

    def __init__(self, base: Path, smoke: bool = False) -> None:
        self.base = base
        self.shared_state = run.smoke_kit_state(smoke)
        # Short: the embedded server's socket goes in it.
        self.kit_state = self.shared_state or Path(tempfile.mkdtemp(prefix="tkbf-", dir="/tmp"))
        try:
            self.server = run.Server(run.smoke_server_url(smoke))
        except BaseException:
            self._remove_state()
            raise
        try:
            # After the bench's server started (it stays with init): from here on, detached
            # processes of a run (the kit's embedded server) become this process's children.
            paired.become_subreaper()
            self.runner = paired.Runner(
                server_cpu=self.server.cpu_seconds, settle=0.0 if smoke else paired.SETTLE
            )
            self.server.prepare([BY_KEY["K"], BY_KEY["B"]])
            self.projects: dict[tuple[str, int], Path] = {}
            for key in ("K", "B"):
                for count in COUNTS:
                    project = generate(BY_KEY[key], count, base / f"{key}-n{count}")
                    (project / "tests" / "test_app_import.py").write_text(IMPORT_APP)
                    self.projects[key, count] = project
        except BaseException:  # nothing left behind: the server, the state folder
            self.close()
            raise

    def command(self, setup: str) -> tuple[list[str], dict[str, str], str]:
        key = "B" if setup == "B" else "K"
        spec = BY_KEY[key]
        args = run.pytest_command(spec, self.server, "psycopg")
        env = paired.python_env()
        if key == "K":
            env["TMPDIR"] = str(self.kit_state)
            if setup == "K-emb":
                at = args.index("--testkit-db-url")
                del args[at : at + 2]
                args += run.embedded_cache_args(self.shared_state)
        else:
            env["BENCH_DATABASE_URL"] = self.server.url(database_name(spec), "psycopg")
        return args, env, key

    def run(self, setup: str, count: int) -> paired.Result:
        args, env, key = self.command(setup)
        return self.runner.run(f"{setup} n={count}", args, self.projects[key, count], env)

    def close(self) -> None:
        self.server.stop()
        paired.reap_orphans(set(), wait=10)
        self._remove_state()

    def _remove_state(self) -> None:
        if self.shared_state is None:  # a shared one is its owner's to remove
            shutil.rmtree(self.kit_state, ignore_errors=True)


def check(result: paired.Result, count: int) -> str | None:
    """What is wrong with a run, or None."""
    if result.timed_out:
        return "timed out"
    counts = result.counts()
    if count == 0:
        ok = result.code == 5 and "no tests ran" in result.output
    else:
        ok = result.code == 0 and counts.get("passed") == count and len(counts) == 1
    return None if ok else f"exit {result.code}:\n{result.output[-3000:]}"


def measure(
    bench: Bench, rounds: int, warm: bool = True, counts: tuple[int, ...] = COUNTS
) -> dict[tuple[str, int], list[paired.Result]]:
    for setup in SETUPS if warm else ():  # not timed: bytecode, rewritten asserts, the cache
        for count in counts:
            problem = check(bench.run(setup, count), count)
            if problem:
                raise SystemExit(f"{setup} with {count} test(s) failed its warm-up run: {problem}")
    results: dict[tuple[str, int], list[paired.Result]] = defaultdict(list)
    jobs = [(setup, count) for setup in SETUPS for count in counts]
    for round_index in range(rounds):
        paired.stderr(f"round {round_index + 1}/{rounds}: ", end="")
        for setup, count in paired.rotate(jobs, round_index):
            result = bench.run(setup, count)
            problem = check(result, count)
            if problem:
                raise SystemExit(f"{setup} with {count} test(s) failed: {problem}")
            results[setup, count].append(result)
            paired.stderr(f"{setup}/{count} {result.wall:.2f}s ", end="")
        paired.stderr("")
    return results


def report(results: dict[tuple[str, int], list[paired.Result]], rounds: int) -> str:
    lines = []
    for measure_name, attr in (("wall", "wall"), ("CPU", "cpu")):
        pairings = []
        for count in COUNTS:
            ref = [getattr(r, attr) for r in results["B", count]]
            for setup in ("K-emb", "K-conf"):
                subject = [getattr(r, attr) for r in results[setup, count]]
                pairings.append(paired.Pairing(f"{setup}, {count} test(s)", "B", subject, ref))
        lines += [
            f"{measure_name} time of the run, {rounds} paired rounds (target 1: K − B ≤ 0.1 s):",
            "",
            paired.paired_table(pairings, measure_name),
            "",
        ]
    return "\n".join(lines)


# --- --profile ------------------------------------------------------------------------------------


@dataclass
class Instrumented:
    """What one instrumented 1-test run found (None: not asked for)."""

    result: paired.Result | None = None
    phases: dict[str, float] | None = None
    imports: dict[str, int] | None = None
    cprofile: str | None = None


def instrumented(
    bench: Bench,
    setup: str,
    *,
    marks: bool = False,
    importtime: bool = False,
    cprofile_top: int | None = None,
) -> Instrumented:
    """A 1-test run of ``setup`` with the asked instruments: the phases' timestamps
    (``bench_marks``), the modules' import times (``-X importtime``) and a cProfile of the
    kit's functions (the ``cprofile_top`` first by cumulative time)."""
    args, env, key = bench.command(setup)
    marks_file = bench.base / f"marks-{setup}.txt"
    out = bench.base / f"profile-{setup}.pstats"
    if marks:
        marks_file.unlink(missing_ok=True)
        args += ["-p", "bench_marks"]
        env["BENCH_MARKS_FILE"] = str(marks_file)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(HERE), os.environ.get("PYTHONPATH"))))
    if importtime:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    if cprofile_top is not None:
        at = args.index("pytest")
        args = [*args[: at - 1], "-m", "cProfile", "-o", str(out), "-m", *args[at:]]
    what = ", ".join(
        name
        for name, asked in (
            ("timestamps", marks),
            ("-X importtime", importtime),
            ("cProfile", cprofile_top is not None),
        )
        if asked
    )
    result = bench.runner.run(f"{setup} ({what})", args, bench.projects[key, 1], env)
    problem = check(result, 1)
    if problem:
        raise SystemExit(f"{setup} ({what}) failed: {problem}")
    found = Instrumented(result)
    if marks:
        found.phases = _phases(result, marks_file)
    if importtime:
        found.imports = _imports(result)
    if cprofile_top is not None:
        found.cprofile = _cprofile(out, cprofile_top)
    return found


def _phases(result: paired.Result, marks: Path) -> dict[str, float]:
    stamps = {"launch": result.started_at, "exit": result.ended_at}
    for line in marks.read_text().splitlines():
        name, value = line.split()
        stamps.setdefault(name, float(value))  # configure_first: the first one
    return {label: stamps[b] - stamps[a] for label, a, b in PHASES if a in stamps and b in stamps}


def _imports(result: paired.Result) -> dict[str, int]:
    """Own import time (µs, ``-X importtime``'s self column) of every module the run
    imported."""
    found: dict[str, int] = {}
    for line in result.output.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        try:
            own, _, name = line[len("import time:") :].split("|")
            found[name.strip()] = found.get(name.strip(), 0) + int(own)
        except ValueError:
            continue
    return found


def _cprofile(out: Path, top: int) -> str:
    stream = io.StringIO()
    stats = pstats.Stats(str(out), stream=stream)
    stats.sort_stats("cumulative").print_stats("anyio_fastapi_testkit", top)
    keep = []
    for line in stream.getvalue().splitlines():
        if "anyio_fastapi_testkit" in line or "cumtime" in line:
            keep.append(line.replace(str(Path(sys.prefix).parent), "…"))
    return "\n".join(keep[: top + 1])


def instrument(bench: Bench, top: int = 25, smoke: bool = False) -> dict[str, Instrumented]:
    """The instrumented 1-test runs of every set-up that ``profile`` reports on."""
    # What each set-up's profile needs: a run per instrument, in this order, each timing
    # undisturbed by the others; in a smoke, one run per set-up with all of its instruments.
    needs = {
        "K-emb": {"marks", "imports", "cprofile"},
        "K-conf": {"marks", "cprofile"},
        "B": {"marks", "imports"},
    }

    def with_(setup: str, instruments: set[str]) -> Instrumented:
        return instrumented(
            bench,
            setup,
            marks="marks" in instruments,
            importtime="imports" in instruments,
            cprofile_top=top if "cprofile" in instruments else None,
        )

    found = {setup: Instrumented() for setup in SETUPS}
    if smoke:
        found = {setup: with_(setup, needs[setup]) for setup in SETUPS}
    else:
        for kind in ("marks", "imports", "cprofile"):
            for setup in SETUPS:
                if kind in needs[setup]:
                    one = with_(setup, {kind})
                    found[setup].phases = found[setup].phases or one.phases
                    found[setup].imports = found[setup].imports or one.imports
                    found[setup].cprofile = found[setup].cprofile or one.cprofile
    return found


def profile(found: dict[str, Instrumented]) -> str:
    """Where K's time goes: the phases, the kit's imports, the cProfile (see ``instrument``)."""
    lines = ["Phases of a 1-test run (wall s; one run each, after the timed rounds):", ""]
    timed = {setup: found[setup].phases or {} for setup in SETUPS}
    lines += ["| phase | " + " | ".join(SETUPS) + " |", "|---|" + "--:|" * len(SETUPS)]
    for label, _, _ in PHASES:
        cells = [f"{timed[s][label]:.3f}" if label in timed[s] else "—" for s in SETUPS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    total = [f"{sum(timed[s].values()):.3f}" for s in SETUPS]
    lines += ["| total | " + " | ".join(total) + " |", ""]
    kit_imports, b_imports = found["K-emb"].imports or {}, found["B"].imports or {}
    by_package: dict[str, int] = defaultdict(int)
    for name, us in kit_imports.items():
        if name not in b_imports:
            by_package[name.split(".")[0]] += us
    only_kit = sorted(by_package.items(), key=lambda item: -item[1])
    lines += [
        "Modules imported in K-emb's 1-test run and not in B's (-X importtime, own time, by "
        "top-level package):",
        "",
        "| package | modules' own import time (ms) |",
        "|---|--:|",
        *(f"| {name} | {us / 1000:.1f} |" for name, us in only_kit[:15]),
        f"| total | {sum(by_package.values()) / 1000:.1f} |",
        "",
    ]
    for setup in ("K-emb", "K-conf"):
        lines += [
            f"cProfile of a 1-test {setup} run, the kit's functions by cumulative time "
            "(inflated by the profiler: read as shares):",
            "",
            "```",
            found[setup].cprofile or "",
            "```",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="paired rounds (default 9)")
    parser.add_argument("--profile", action="store_true", help="also where K's time goes")
    parser.add_argument(
        "--smoke", action="store_true", help="one round, no verdict: every run passes"
    )
    args = parser.parse_args(argv)
    rounds = 1 if args.smoke else args.rounds
    started = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="tkfixed-"))
    bench: Bench | None = None
    try:
        bench = Bench(base, args.smoke)
        # In a smoke with --profile, each set-up's 1-test run is its instrumented run.
        folded = args.smoke and args.profile
        results = measure(bench, rounds, warm=not args.smoke, counts=(0,) if folded else COUNTS)
        found = instrument(bench, smoke=True) if folded else None
        for setup, one in (found or {}).items():
            assert one.result is not None
            results[setup, 1].append(one.result)
        print(paired.header("Fixed cost per run (benchmarks/fixed_cost.py)"))
        print(f"Server: {bench.server.version.split(' (')[0]}.\n")
        print(report(results, rounds))
        if args.smoke:
            print("smoke: every set-up passed with 0 and 1 test(s)")
        if args.profile:
            print(profile(found or instrument(bench)))
    finally:
        if bench is not None:
            bench.close()
        shutil.rmtree(base, ignore_errors=True)
    paired.stderr(f"(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
