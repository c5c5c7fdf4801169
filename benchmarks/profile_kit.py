"""Where does a test's time go? Per-phase and per-fixture times, and a cProfile of the kit's run.

    python benchmarks/profile_kit.py [--n 300] [--only K,K-noleak,B,F3] [--cprofile]

Runs each set-up once with N tests and the ``bench_phases`` plugin, and prints per test:
pytest's setup / call / teardown phases, the rest of the per-test protocol (reporting hooks),
and the own setup and teardown time of every fixture. With ``--cprofile`` it also runs K under
cProfile and prints, per test, the CPU time by package and the kit's own functions. Timings
under cProfile are inflated; read them as shares, not as absolute costs.
"""

from __future__ import annotations

import argparse
import json
import pstats
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "sample_app"))

import run  # noqa: E402
from generate import BY_KEY, generate  # noqa: E402


def phases_table(key: str, data: dict, n: int) -> str:
    ph = data["phases"]

    def ms(seconds: float) -> str:
        return f"{seconds / n * 1000:.3f}"

    rows = []
    for prefix, label in (("", "wall"), ("cpu_", "CPU")):
        other = ph[f"{prefix}protocol"] - sum(
            ph[f"{prefix}{name}"] for name in ("setup", "call", "teardown")
        )
        rows.append(
            f"| {label} | {ms(ph[f'{prefix}setup'])} | {ms(ph[f'{prefix}call'])} | "
            f"{ms(ph[f'{prefix}teardown'])} | {ms(other)} | {ms(ph[f'{prefix}protocol'])} |"
        )
    lines = [
        f"### {key}: {data['items']} tests, per test (ms)",
        "",
        f"Collection: {ms(ph['collection'])} ms per test wall, {ms(ph['cpu_collection'])} CPU; "
        f"test loop: {ms(ph['runtestloop'])} wall, {ms(ph['cpu_runtestloop'])} CPU.",
        "",
        "| per test | setup | call | teardown | rest of the protocol (reports, hooks) | protocol |",
        "|---|--:|--:|--:|--:|--:|",
        *rows,
        "",
        "| fixture | scope | set up (times) | own setup wall / CPU per test (ms) | "
        "own teardown wall / CPU per test (ms) |",
        "|---|---|--:|--:|--:|",
    ]
    fixtures = sorted(
        data["fixtures"].items(), key=lambda kv: -(kv[1]["setup"] + kv[1]["teardown"])
    )
    for name, f in fixtures:
        lines.append(
            f"| {name} | {f['scope']} | {f['count']} | {ms(f['setup'])} / "
            f"{ms(f['cpu_setup'])} | {ms(f['teardown'])} / {ms(f['cpu_teardown'])} |"
        )
    return "\n".join(lines)


_GROUPS = (
    ("anyio_fastapi_testkit", "anyio-fastapi-testkit"),
    ("site-packages/psycopg", "psycopg"),
    ("site-packages/sqlalchemy", "sqlalchemy"),
    ("site-packages/httpx2", "httpx2"),
    ("site-packages/httpx/", "httpx"),
    ("site-packages/httpcore", "httpcore"),
    ("site-packages/fastapi", "fastapi"),
    ("site-packages/starlette", "starlette"),
    ("site-packages/pydantic", "pydantic"),
    ("site-packages/anyio", "anyio"),
    ("site-packages/asgi_lifespan", "asgi-lifespan"),
    ("site-packages/_pytest", "pytest"),
    ("site-packages/pluggy", "pluggy"),
    ("site-packages/greenlet", "greenlet"),
    ("lib/python3", "stdlib"),
)


def _group(filename: str, funcname: str) -> str:
    for needle, label in _GROUPS:
        if needle in filename:
            if label == "stdlib" and ("asyncio" in filename or "selectors" in filename):
                return "stdlib asyncio"
            return label
    if filename == "~":
        if "psycopg" in funcname:
            return "psycopg (C)"
        if "select" in funcname or "epoll" in funcname or "poll" in funcname:
            return "waiting in epoll (server round trips)"
        return "builtins"
    return "other"


def cprofile_report(key: str, prof: Path, n: int) -> str:
    stats = pstats.Stats(str(prof))
    by_group: dict[str, float] = defaultdict(float)
    kit_rows = []
    for (filename, line, funcname), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        by_group[_group(filename, funcname)] += tt
        if "anyio_fastapi_testkit" in filename:
            short = filename.split("anyio_fastapi_testkit/")[-1]
            kit_rows.append((ct, tt, nc, f"{short}:{line} {funcname}"))
    total = sum(by_group.values())
    lines = [
        f"### cProfile of {key} ({n} tests): own time by package, per test",
        "",
        "| package | ms per test | share |",
        "|---|--:|--:|",
    ]
    for label, seconds in sorted(by_group.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {label} | {seconds / n * 1000:.3f} | {seconds / total:.0%} |")
    lines += [
        "",
        "### The kit's functions by cumulative time (includes what they call), per test",
        "",
        "| function | calls per test | cumulative ms per test | own ms per test |",
        "|---|--:|--:|--:|",
    ]
    for ct, tt, nc, name in sorted(kit_rows, reverse=True)[:30]:
        lines.append(f"| {name} | {nc / n:.2f} | {ct / n * 1000:.3f} | {tt / n * 1000:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--only", default="K,K-noleak,B,F3")
    parser.add_argument(
        "--cprofile", action="store_true", help="also run the kit set-ups under cProfile"
    )
    parser.add_argument("--driver", choices=("psycopg", "asyncpg"), default="psycopg")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per set-up, interleaved; the one with the fastest test loop is shown",
    )
    args = parser.parse_args(argv)
    setups = [BY_KEY[key.strip()] for key in args.only.split(",") if key.strip()]
    base = Path(tempfile.mkdtemp(prefix="anyio-fastapi-testkit-profile-"))
    server = run.Server()
    try:
        server.prepare(setups)
        paths = {}
        for setup in setups:
            path = generate(setup, args.n, base / setup.key)
            shutil.copy2(HERE / "bench_phases.py", path / "bench_phases.py")
            run.run_pytest(run.Project(setup, args.n, path), server, args.driver, "--collect-only")
            paths[setup.key] = path
        best: dict[str, tuple[float, dict]] = {}
        for _ in range(args.repeat):
            for setup in setups:
                path = paths[setup.key]
                out = base / f"phases-{setup.key}.json"
                env = run.child_env(setup, server, args.driver)
                env["BENCH_PHASES_FILE"] = str(out)
                command = [*run.pytest_command(setup, server, args.driver), "-p", "bench_phases"]
                completed = subprocess.run(
                    command, cwd=path, env=env, capture_output=True, text=True
                )
                if completed.returncode != 0:
                    print(completed.stdout[-3000:], completed.stderr[-3000:], file=sys.stderr)
                    return 1
                data = json.loads(out.read_text())
                loop = data["phases"]["runtestloop"]
                if setup.key not in best or loop < best[setup.key][0]:
                    best[setup.key] = (loop, data)
        for setup in setups:
            print(phases_table(setup.key, best[setup.key][1], args.n))
            print()
        for setup in setups:
            if args.cprofile and setup.runner == "kit":
                path = paths[setup.key]
                prof = base / f"{setup.key}.prof"
                command = run.pytest_command(setup, server, args.driver)
                command[1:1] = ["-m", "cProfile", "-o", str(prof)]
                subprocess.run(
                    command,
                    cwd=path,
                    env=run.child_env(setup, server, args.driver),
                    capture_output=True,
                    text=True,
                    check=True,
                )
                print(cprofile_report(setup.key, prof, args.n))
                print()
        return 0
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
