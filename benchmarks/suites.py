# ruff: noqa: RUF001, RUF002, RUF003  (the printed tables use ×, − and the en dash)
"""Whole-suite wall and CPU time of real-shaped suites: the kit against hand-written conftests.

    python benchmarks/suites.py [--rounds 9] [--only small,api40,generated] [--n 300] [--shared]
                                [--smoke]

The suites (``suites/<name>/``: an app, its tests, and two ways to run them, ``kit/`` and
``hand/``):

* ``small``: a notes service shaped like a popular template: pydantic-settings behind an
  ``lru_cache``, asyncpg, the schema from two Alembic migrations (async ``env.py`` reading the
  app's settings), 14 tests, and a 2–3 s app import (``smallapp/catalog.py`` builds 1500
  pydantic models at import, real work; ``BENCH_IMPORT_MODELS`` changes the count).
  Hand-written: anyio's plugin with a session-scoped backend, ``alembic upgrade head`` once
  per run (``downgrade base`` at the end), savepoint session, dependency override, httpx.
* ``api40``: a 40-test shop API: CRUD, routers nested two deep, a billing service that opens a
  session of its own from the app's sessionmaker. Hand-written: pytest-asyncio with a session
  loop, ``create_all``/``drop_all`` per run, the app's sessionmaker bound to the test's
  connection in savepoint mode, dependency override, httpx.
* ``generated``: run.py's generated bench (``--n`` tests): set-up K against set-up B.

Each suite runs three ways per round, back to back in a rotating order: ``kit-emb`` (the kit
on its own embedded server, its cluster cache warm, in a private state folder deleted at the
end), ``kit-conf`` (the kit on a configured server: the bench's server, by
``--testkit-db-url``) and ``hand`` (the hand-written conftest on the bench's server). Printed:
per suite, the paired verdict of each kit way against ``hand`` on wall and on CPU time (CPU:
see paired.py). Target 2 of issue 19: ratio ≤ 1.0.

``--shared`` adds, on a suite whose hand-written side gives every request the test's own
session (``api40``), a fourth way: ``kit-conf-shared``, kit-conf with
``testkit_share_session = true``, the same recipe under the kit. The kit's default gives each
request a session of its own, as the app has in production; this way tells that difference in
behaviour apart from the kit's own cost.

``--smoke``: one round, no warm-up, the small suite's import with 20 models
(``BENCH_IMPORT_MODELS``); with the bench server and the kit's cached cluster of
``$BENCH_SMOKE_SERVER_URL`` and ``$BENCH_SMOKE_KIT_STATE`` if given (see run.py). Without
``--only``, it runs ``small`` and ``api40``: the generated suite's three ways are the projects
and commands that other smokes run already (``kit-conf`` and ``hand`` are set-ups K and B of
``run.py --smoke``, ``kit-emb`` is K-emb of ``fixed_cost.py --smoke``); ``--only generated``
smokes it here too, with 10 tests.
"""

from __future__ import annotations

import argparse
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
from generate import BY_KEY, generate  # noqa: E402

SUITES_DIR = HERE / "suites"
WAYS = ("kit-emb", "kit-conf", "hand")
SHARED = "kit-conf-shared"  # --shared: kit-conf with testkit_share_session = true
DEFAULT_N = 300
SMOKE_N = 10
# The generated suite's ways are smoked by run.py (K, B) and fixed_cost.py (K-emb).
SMOKE_SUITES = ("small", "api40")
SMOKE_IMPORT_MODELS = 20  # the small suite's app import: the same work, smaller


@dataclass(frozen=True)
class Suite:
    name: str
    tests: int  # expected passes (generated: --n)
    hand_runner: str  # "anyio" or "asyncio"
    driver: str  # the app's driver (hand-written side's URL)
    title: str
    shares_session: bool = False  # the hand-written side gives every request the test's session


SUITES = {
    "small": Suite("small", 14, "anyio", "asyncpg", "Alembic, asyncpg, 2–3 s app import, 14 tests"),
    "api40": Suite(
        "api40", 40, "asyncio", "psycopg", "40-test API, nested routers, a service", True
    ),
    "generated": Suite("generated", DEFAULT_N, "asyncio", "psycopg", "run.py's generated bench"),
}


def build(suite: Suite, way: str, base: Path, n: int) -> Path:
    """The project of ``suite`` run the ``way`` way (kit or hand), in ``base``."""
    dest = base / f"{suite.name}-{way}"
    if suite.name == "generated":
        return generate(BY_KEY["K" if way == "kit" else "B"], n, dest)
    source = SUITES_DIR / suite.name
    shutil.copytree(
        source,
        dest,
        ignore=shutil.ignore_patterns("kit", "hand", "__pycache__", ".pytest_cache"),
    )
    for item in (source / way).iterdir():
        shutil.copy2(item, dest / item.name)
    return dest


class Bench:
    def __init__(self, base: Path, suites: list[Suite], n: int, smoke: bool = False) -> None:
        self.base = base
        self.n = n
        self.smoke = smoke
        self.shared_state = run.smoke_kit_state(smoke)
        self.kit_state = self.shared_state or Path(tempfile.mkdtemp(prefix="tkbs-", dir="/tmp"))
        try:
            self.server = run.Server(run.smoke_server_url(smoke))
        except BaseException:
            self._remove_state()
            raise
        try:
            paired.become_subreaper()  # see paired.py: the kit's embedded server's CPU time
            self.runner = paired.Runner(
                server_cpu=self.server.cpu_seconds, settle=0.0 if smoke else paired.SETTLE
            )
            self.suites = suites
            self.projects = {
                (suite.name, way): build(suite, way, base, n)
                for suite in suites
                for way in ("kit", "hand")
            }
            self._create_databases()
        except BaseException:  # nothing left behind: the server, the state folder
            self.close()
            raise

    def _create_databases(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.server.url("postgres", None), autocommit=True) as conn:
            for suite in self.suites:
                for side in ("k", "h"):
                    name = sql.Identifier(f"suite_{suite.name}_{side}")
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(name))

    def expected(self, suite: Suite) -> int:
        return self.n if suite.name == "generated" else suite.tests

    def run(self, suite: Suite, way: str, *extra: str) -> paired.Result:
        args = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-q"]
        env = paired.python_env()
        if self.smoke:
            env["BENCH_IMPORT_MODELS"] = str(SMOKE_IMPORT_MODELS)
        if way.startswith("kit"):
            args += ["-p", "no:asyncio"]
            env["TMPDIR"] = str(self.kit_state)
            if way in ("kit-conf", SHARED):
                args += ["--testkit-db-url", self.server.url(f"suite_{suite.name}_k", None)]
            if way == SHARED:
                args += ["-o", "testkit_share_session=true"]
            else:
                args += run.embedded_cache_args(self.shared_state)
            project = self.projects[suite.name, "kit"]
        else:
            args += ["-p", "no:anyio_fastapi_testkit.plugin"]
            if suite.hand_runner == "anyio":
                args += ["-p", "no:asyncio"]
            env["BENCH_DATABASE_URL"] = self.server.url(f"suite_{suite.name}_h", suite.driver)
            project = self.projects[suite.name, "hand"]
        result = self.runner.run(f"{suite.name} {way}", [*args, *extra], project, env)
        paired.expect(result, {"passed": self.expected(suite)}, 0)
        return result

    def close(self) -> None:
        self.server.stop()
        paired.reap_orphans(set(), wait=10)
        self._remove_state()

    def _remove_state(self) -> None:
        if self.shared_state is None:  # a shared one is its owner's to remove
            shutil.rmtree(self.kit_state, ignore_errors=True)


def ways(suite: Suite, shared: bool) -> tuple[str, ...]:
    return (*WAYS, SHARED) if shared and suite.shares_session else WAYS


def measure(
    bench: Bench, rounds: int, warm: bool = True, shared: bool = False
) -> dict[tuple[str, str], list[paired.Result]]:
    for suite in bench.suites if warm else ():  # not timed: bytecode, rewritten asserts, cache
        for way in ways(suite, shared):
            bench.run(suite, way)
    results: dict[tuple[str, str], list[paired.Result]] = defaultdict(list)
    for round_index in range(rounds):
        paired.stderr(f"round {round_index + 1}/{rounds}: ", end="")
        for suite in bench.suites:
            for way in paired.rotate(ways(suite, shared), round_index):
                result = bench.run(suite, way)
                results[suite.name, way].append(result)
                paired.stderr(f"{suite.name}/{way} {result.wall:.2f}s ", end="")
        paired.stderr("")
    return results


def report(bench: Bench, results: dict[tuple[str, str], list[paired.Result]], rounds: int) -> str:
    lines = []
    for suite in bench.suites:
        tests = bench.expected(suite)
        lines += [f"### {suite.name}: {suite.title} ({tests} tests), {rounds} paired rounds", ""]
        for what, attr in (("wall", "wall"), ("CPU", "cpu")):
            ref = [getattr(r, attr) for r in results[suite.name, "hand"]]
            pairings = [
                paired.Pairing(
                    way, "hand", [getattr(r, attr) for r in results[suite.name, way]], ref
                )
                for way in ways(suite, shared=True)
                if way != "hand" and (suite.name, way) in results
            ]
            lines += [paired.paired_table(pairings, what), ""]
    lines.append("Target 2 of issue 19: every ratio ≤ 1.0 (kit-emb and kit-conf, every suite).")
    if any((suite.name, SHARED) in results for suite in bench.suites):
        lines.append(
            f"{SHARED}: kit-conf with testkit_share_session = true, the hand-written side's own "
            "recipe (every request gets the test's session), for comparison only."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="paired rounds (default 9)")
    parser.add_argument(
        "--only",
        help=f"suites, comma-separated (default: {','.join(SUITES)}; "
        f"with --smoke: {','.join(SMOKE_SUITES)})",
    )
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="tests of the generated suite")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"one round, no warm-up: every way passes (the generated suite, if asked for "
        f"with --only, with {SMOKE_N} tests)",
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help=f"also run {SHARED} (kit-conf with testkit_share_session = true) on the suites "
        "whose hand-written side gives every request the test's session (api40)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the projects (debugging)")
    args = parser.parse_args(argv)
    only = args.only or ",".join(SMOKE_SUITES if args.smoke else SUITES)
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; known: {', '.join(SUITES)}")
    rounds, n = (1, SMOKE_N) if args.smoke else (args.rounds, args.n)
    started = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="tksuites-"))
    bench: Bench | None = None
    try:
        bench = Bench(base, [SUITES[name] for name in names], n, args.smoke)
        results = measure(bench, rounds, warm=not args.smoke, shared=args.shared)
        print(paired.header("Real-suite wall time (benchmarks/suites.py)"))
        print(f"Server: {bench.server.version.split(' (')[0]}.\n")
        print(report(bench, results, rounds))
        if args.smoke:
            print(f"smoke: every way of {', '.join(names)} passed")
    finally:
        if bench is not None:
            bench.close()
        if args.keep:
            paired.stderr(f"projects kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    paired.stderr(f"(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
