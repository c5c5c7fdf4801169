# ruff: noqa: RUF001, RUF003  (the printed tables use ×, − and the en dash)
"""What failing tests cost under the kit, against the same failures without it.

    python benchmarks/failures.py [--rounds 9] [--n 10] [--smoke]

Two pairs of projects, each with N tests that all fail on an assertion (a list of dicts that
differs from the expected one, so that pytest renders a diff):

* ``api``: the bench app's test (create a user and two items, list them) asserting the wrong
  order of the items; the kit (set-up K of run.py, on the bench's server) against the
  hand-written recipe (set-up B);
* ``plain``: an async test with no fixtures (an ``await`` and the same kind of assertion); the
  kit with no settings against anyio's plugin alone (``anyio_mode = auto``, one loop).

Each is run with ``--tb=auto`` and with ``--tb=no``; every round runs the eight runs back to
back in a rotating order. Printed: the paired verdict (kit against no kit) on wall and CPU
time. Target 3 of issue 19: ratio ≤ 1.05.

``--smoke``: one round of 3 tests, no warm-up, with ``--tb=auto`` only (a ``--tb=no`` run is
the same run, less the reports it would not print), on the bench server of
``$BENCH_SMOKE_SERVER_URL`` if given (see run.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "sample_app"))

import paired  # noqa: E402
import run  # noqa: E402
from generate import BY_KEY, database_name, generate  # noqa: E402

DEFAULT_N = 10
SMOKE_N = 3
TBS = ("auto", "no")
SMOKE_TBS = ("auto",)

API_TEST = """
async def test_fails_{i:03d}(client):
    body = {{"name": "U{i}", "email": "u{i}@example.com"}}
    user = (await client.post("/users", json=body)).json()
    item = {{"price_cents": 1, "owner_id": user["id"]}}
    first = await client.post("/items", json={{"title": "A", **item}})
    second = await client.post("/items", json={{"title": "B", **item}})
    listed = await client.get("/items")
    assert listed.json() == [second.json(), first.json()]  # wrong order: fails
"""

PLAIN_TEST = """
async def test_fails_{i:03d}():
    actual = await fetch({i})
    assert actual == {{"id": {i}, "tags": ["a", "b", "c"], "total": {i}}}  # fails: "c" is "d"
"""

PLAIN_HEADER = '''"""Failing async tests with no fixtures."""

import anyio


async def fetch(i):
    await anyio.sleep(0)
    return {"id": i, "tags": ["a", "b", "d"], "total": i}
'''

KIT_PLAIN_INI = "# The kit, no settings: async tests need no marker.\n[pytest]\ntestpaths = tests\n"
ANYIO_PLAIN_INI = (
    "# anyio's plugin alone, auto mode, one loop (conftest.py).\n"
    "[pytest]\ntestpaths = tests\nanyio_mode = auto\n"
)
ANYIO_CONFTEST = """import pytest


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"
"""

# (flavor, side) -> how it is run
SIDES = {
    ("api", "kit"): "K",
    ("api", "no kit"): "B",
    ("plain", "kit"): "kit-plain",
    ("plain", "no kit"): "anyio-plain",
}


class Bench:
    def __init__(self, base: Path, n: int, smoke: bool = False) -> None:
        self.n = n
        self.server = run.Server(run.smoke_server_url(smoke))
        try:
            paired.become_subreaper()
            self.runner = paired.Runner(
                server_cpu=self.server.cpu_seconds, settle=0.0 if smoke else paired.SETTLE
            )
            self.server.prepare([BY_KEY["K"], BY_KEY["B"]])
            self.projects: dict[str, Path] = {}
            for key in ("K", "B"):
                project = generate(BY_KEY[key], 0, base / f"api-{key}")
                body = "\n".join(API_TEST.format(i=i) for i in range(n))
                (project / "tests" / "test_failures.py").write_text(
                    '"""Failing API tests."""\n' + body
                )
                self.projects[key] = project
            for name, ini, conftest in (
                ("kit-plain", KIT_PLAIN_INI, None),
                ("anyio-plain", ANYIO_PLAIN_INI, ANYIO_CONFTEST),
            ):
                project = base / name
                (project / "tests").mkdir(parents=True)
                (project / "pytest.ini").write_text(ini)
                if conftest:
                    (project / "conftest.py").write_text(conftest)
                body = "\n".join(PLAIN_TEST.format(i=i) for i in range(n))
                (project / "tests" / "test_failures.py").write_text(PLAIN_HEADER + body)
                self.projects[name] = project
        except BaseException:  # nothing left behind: the server, the state folder
            self.close()
            raise

    def run(self, flavor: str, side: str, tb: str) -> paired.Result:
        name = SIDES[flavor, side]
        args = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-q", f"--tb={tb}"]
        env = paired.python_env()
        if name in ("K", "B"):
            spec = BY_KEY[name]
            args = [*run.pytest_command(spec, self.server, "psycopg"), f"--tb={tb}"]
            if name == "B":
                env["BENCH_DATABASE_URL"] = self.server.url(database_name(spec), "psycopg")
        elif name == "kit-plain":
            args += ["-p", "no:asyncio"]
        else:
            args += ["-p", "no:asyncio", "-p", "no:anyio_fastapi_testkit.plugin"]
        result = self.runner.run(f"{flavor} {side} --tb={tb}", args, self.projects[name], env)
        paired.expect(result, {"failed": self.n}, 1)
        return result

    def close(self) -> None:
        self.server.stop()
        paired.reap_orphans(set(), wait=10)


def _differences(a: list[paired.Result], b: list[paired.Result], attr: str) -> list[float]:
    return [getattr(x, attr) - getattr(y, attr) for x, y in zip(a, b, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="paired rounds (default 9)")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="failing tests per run")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"one round, {SMOKE_N} tests, --tb=auto only: every run fails right",
    )
    args = parser.parse_args(argv)
    rounds, n = (1, SMOKE_N) if args.smoke else (args.rounds, args.n)
    tbs = SMOKE_TBS if args.smoke else TBS
    started = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="tkfail-"))
    jobs = [
        (flavor, side, tb)
        for flavor in ("api", "plain")
        for tb in tbs
        for side in ("kit", "no kit")
    ]
    bench: Bench | None = None
    try:
        bench = Bench(base, n, args.smoke)
        if not args.smoke:  # not timed: bytecode and rewritten asserts
            for job in jobs:
                bench.run(*job)
        results: dict[tuple[str, str, str], list[paired.Result]] = defaultdict(list)
        for round_index in range(rounds):
            paired.stderr(f"round {round_index + 1}/{rounds}: ", end="")
            for job in paired.rotate(jobs, round_index):
                result = bench.run(*job)
                results[job].append(result)
                paired.stderr(f"{job[0]}/{job[1]}/{job[2]} {result.wall:.2f}s ", end="")
            paired.stderr("")
        print(paired.header("Failing tests (benchmarks/failures.py)"))
        print(f"{n} failing tests per run, {rounds} paired rounds.\n")
        for what, attr in (("wall", "wall"), ("CPU", "cpu")):
            pairings = [
                paired.Pairing(
                    f"{flavor}, kit, --tb={tb}",
                    "no kit",
                    [getattr(r, attr) for r in results[flavor, "kit", tb]],
                    [getattr(r, attr) for r in results[flavor, "no kit", tb]],
                )
                for flavor in ("api", "plain")
                for tb in tbs
            ]
            print(paired.paired_table(pairings, what))
            print()
            if "no" not in tbs:  # a smoke's: nothing to take the rendering's cost from
                continue
            # What rendering the tracebacks costs each side: its --tb=auto run less its
            # --tb=no run of the same round; paired, the kit's extra for the N reports.
            rendering = [
                paired.Pairing(
                    f"{flavor}, kit: --tb=auto − --tb=no",
                    "no kit: the same",
                    _differences(
                        results[flavor, "kit", "auto"], results[flavor, "kit", "no"], attr
                    ),
                    _differences(
                        results[flavor, "no kit", "auto"], results[flavor, "no kit", "no"], attr
                    ),
                )
                for flavor in ("api", "plain")
            ]
            print(
                f"Rendering the {n} failures' reports ({what}; read the difference, the ratio "
                "of two differences means little):"
            )
            print()
            print(paired.paired_table(rendering, what))
            print()
        print(
            "Target 3 of issue 19: every ratio ≤ 1.05. api: K against B; plain: the kit "
            "with no settings against anyio's plugin alone."
        )
        if args.smoke:
            print(f"smoke: every run failed exactly as expected (--tb={', --tb='.join(tbs)})")
    finally:
        if bench is not None:
            bench.close()
        shutil.rmtree(base, ignore_errors=True)
    paired.stderr(f"(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
