# ruff: noqa: RUF001, RUF002, RUF003  (the printed tables use ×, − and the en dash)
"""What the whole-suite benchmarks share: timed pytest processes, their CPU time, paired rounds.

Used by ``fixed_cost.py``, ``suites.py``, ``failures.py`` and ``collection.py``.

* A run is one ``python -m pytest`` process, timed from its start to its exit (wall time).
* Its CPU time is that of the whole process tree: the pytest process, everything it started,
  and the kit's embedded PostgreSQL server with its backends. ``pg_ctl`` detaches the embedded
  server from pytest; this process makes itself a *child subreaper* (Linux
  ``PR_SET_CHILD_SUBREAPER``) so that such orphans are re-parented to it, waits after each run
  until they have exited (not timed: wall time stops when pytest exits) and reaps them: their
  CPU time is then in ``getrusage(RUSAGE_CHILDREN)``. Added to that: the CPU time of the
  bench's own configured server's backends that ended during the run (the postmaster's
  ``cutime``/``cstime``), so that a set-up on the configured server pays for its queries too.
* A paired round runs every compared set-up back to back (in an order that rotates each
  round); the verdict is the median over the rounds of the per-round difference
  (set-up − reference) and ratio, with their spread, and how many rounds the set-up won.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent
T = TypeVar("T")
RUN_TIMEOUT = 900.0
ORPHAN_WAIT = 30.0  # seconds to wait for a run's detached processes (its server) to exit
# Seconds given the configured server after a run to reap the run's backends, whose CPU time
# it then holds; a smoke, which claims no timing, gives none.
SETTLE = 0.05

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants (a detached PostgreSQL) this process's children (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _own_children(exclude: set[int]) -> list[int]:
    """Pids whose parent is this process (Linux /proc), except ``exclude``."""
    me = str(os.getpid())
    found = []
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{me}/task/{me}/children").read_text().split():
            if int(child) not in exclude:
                found.append(int(child))
    return found


def reap_orphans(exclude: set[int], wait: float = ORPHAN_WAIT) -> bool:
    """Wait for this process's children other than ``exclude`` to exit and reap them.

    Returns False if some were still running after ``wait`` seconds (they are left alone).
    """
    deadline = time.monotonic() + wait
    while True:
        pending = _own_children(exclude)
        if not pending:
            return True
        for pid in pending:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        if not _own_children(exclude):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


@dataclass
class Result:
    """One pytest process."""

    label: str
    wall: float
    cpu: float  # pytest's process tree (with reaped orphans) + configured-server backends
    code: int
    output: str
    timed_out: bool = False
    started_at: float = 0.0  # time.time() just before the process was started
    ended_at: float = 0.0  # time.time() just after it was reaped

    def counts(self) -> dict[str, int]:
        """The outcome counts of pytest's summary line (``3 passed, 1 failed in 0.12s``)."""
        summary = [
            line
            for line in self.output.splitlines()
            if re.search(r"\b(passed|failed|errors?|no tests ran)\b.* in [0-9.]+s", line)
        ]
        return {
            word: int(number)
            for number, word in re.findall(
                r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)",
                summary[-1] if summary else "",
            )
        }

    def collected(self) -> int | None:
        found = re.search(r"(\d+) tests? collected", self.output)
        return int(found.group(1)) if found else None


def expect(result: Result, counts: dict[str, int], code: int) -> None:
    """Stop the benchmark (exit 1, with the run's output) unless the run ended with exactly
    these outcome counts and this exit code."""
    found = result.counts()
    if result.timed_out or result.code != code or found != counts:
        raise SystemExit(
            f"{result.label}: expected {counts} and exit {code}, got {found} and "
            f"{'a time-out' if result.timed_out else f'exit {result.code}'}:\n"
            f"{result.output[-4000:]}"
        )


@dataclass
class Runner:
    """Runs pytest processes one at a time, measuring wall and CPU time."""

    server_cpu: Callable[[], float] | None = None  # the configured server's CPU seconds
    exclude: set[int] = field(default_factory=set)  # long-lived children (the bench server)
    settle: float = SETTLE  # see SETTLE

    def run(
        self,
        label: str,
        args: Sequence[str],
        cwd: Path,
        env: dict[str, str],
        timeout: float = RUN_TIMEOUT,
    ) -> Result:
        reap_orphans(self.exclude, wait=ORPHAN_WAIT)
        cpu_before = _children_cpu()
        server_before = self._server_cpu()
        started_at = time.time()
        start = time.perf_counter()
        process = subprocess.Popen(
            list(args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            process.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            assert process.stdout is not None
            output = process.stdout.read().decode(errors="replace")
            _, status, _ = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
            if process.stdout is not None:
                process.stdout.close()
        wall = time.perf_counter() - start
        ended_at = time.time()
        process.returncode = code = os.waitstatus_to_exitcode(status)
        # Not timed: the run's detached processes (the kit's embedded server) end and are
        # reaped, and the configured server reaps the run's backends.
        reap_orphans(self.exclude)
        time.sleep(self.settle)
        cpu = _children_cpu() - cpu_before + (self._server_cpu() - server_before)
        return Result(label, wall, cpu, code, output, killed.is_set(), started_at, ended_at)

    def _server_cpu(self) -> float:
        return self.server_cpu() if self.server_cpu is not None else 0.0


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The children's environment: nothing of the caller's pytest, kit or bench settings;
    bytecode on (so that warm-up runs leave the caches the timed runs use)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in (
            "PYTEST_ADDOPTS",
            "PYTEST_PLUGINS",
            "TESTKIT_DATABASE_URL",
            "DATABASE_URL",
            "PYTHONDONTWRITEBYTECODE",
            "PYTEST_XDIST_WORKER",
            "PYTEST_CURRENT_TEST",
        )
        and not key.startswith(("BENCH_", "TESTKIT_"))
    }
    env.update(extra or {})
    return env


# --- paired statistics --------------------------------------------------------------------------


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


@dataclass
class Pairing:
    """Per-round values of a set-up and its reference (same rounds, same order)."""

    name: str
    reference: str
    subject: list[float]
    ref: list[float]

    @property
    def differences(self) -> list[float]:
        return [s - r for s, r in zip(self.subject, self.ref, strict=True)]

    @property
    def ratios(self) -> list[float]:
        return [s / r if r else float("nan") for s, r in zip(self.subject, self.ref, strict=True)]

    def wins(self) -> int:
        """Rounds in which the set-up took less than its reference."""
        return sum(1 for d in self.differences if d < 0)


def spread(values: Sequence[float], digits: int = 3) -> str:
    """``median (min–max, IQR a–b)``."""
    low, high = _quartiles(values)
    middle, least, most = statistics.median(values), min(values), max(values)
    return (
        f"{middle:.{digits}f} ({least:.{digits}f}–{most:.{digits}f}, "
        f"IQR {low:.{digits}f}–{high:.{digits}f})"
    )


def paired_rows(pairings: Iterable[Pairing], unit: str = "s", scale: float = 1.0) -> list[str]:
    """Markdown rows: median of each side, median difference with spread, median ratio with
    spread, and the rounds the set-up was faster."""
    rows = []
    for p in pairings:
        diffs = [d * scale for d in p.differences]
        rows.append(
            f"| {p.name} | {p.reference} | {statistics.median(p.subject) * scale:.3f} | "
            f"{statistics.median(p.ref) * scale:.3f} | {spread(diffs)} | {spread(p.ratios)} | "
            f"{p.wins()} of {len(diffs)} |"
        )
    return rows


PAIRED_HEADER = [
    "| set-up | against | median {what} ({unit}) | reference median ({unit}) | "
    "difference per round, median (min–max, IQR) ({unit}) | ratio per round, median "
    "(min–max, IQR) | faster in |",
    "|---|---|--:|--:|---|---|--:|",
]


def paired_table(pairings: Sequence[Pairing], what: str, unit: str = "s") -> str:
    header = [line.format(what=what, unit=unit) for line in PAIRED_HEADER]
    return "\n".join(header + paired_rows(pairings))


def rotate(items: Sequence[T], round_index: int) -> list[T]:
    """The order of a round: the list rotated by the round's index (drift spreads evenly)."""
    shift = round_index % len(items) if items else 0
    return list(items[shift:]) + list(items[:shift])


def machine_line() -> str:
    import platform

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
        f"Python {platform.python_version()}, load average at the start {load}"
    )


def commit_line() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        commit = done.stdout.strip() or "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    return f"commit {commit}{' (with uncommitted changes)' if dirty else ''}"


def header(title: str) -> str:
    return (
        f"{title} — {time.strftime('%Y-%m-%d %H:%M %Z')}, {commit_line()}.\n"
        f"Machine: {machine_line()}."
    )


def stderr(message: str, end: str = "\n") -> None:
    print(message, end=end, file=sys.stderr, flush=True)
