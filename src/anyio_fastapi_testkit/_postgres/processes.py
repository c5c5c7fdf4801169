"""Tell whether a process still runs, when it started, in which folder, and what it runs."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

_SERVER_NAMES = ("postgres", "postmaster")
# Linux's /proc answers every question here; psutil, whose import is a noticeable part of a
# run's start (benchmarks/RESULTS.md, run 19), is for the systems without it (macOS).
_PROC = Path("/proc/self/stat").is_file()


def pid_running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (someone else's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    return _proc_state(pid) != "Z"  # a zombie is dead, just not reaped (PID 1 may not reap)


def process_alive(pid: int, clock: object, started: object) -> bool:
    """Whether ``pid`` still runs and is the process ``process_start`` saw start at ``started``.

    True when that cannot be told (no start time, or no such clock here).
    """
    if not pid_running(pid):
        return False
    now = _start_by_clock(pid, clock)
    if now is None or not isinstance(started, (int, float)):
        return True  # cannot tell a reused pid from the original: count it as alive
    return abs(now - started) < 1.0


def process_start(pid: int) -> tuple[str | None, float | None]:
    """The process's start time, and which clock measured it (Linux /proc, else psutil)."""
    for clock in ("proc", "psutil") if _PROC else ("psutil", "proc"):
        started = _start_by_clock(pid, clock)
        if started is not None:
            return clock, started
    return None, None


def process_cwd(pid: int) -> Path | None:
    """The working folder of ``pid``, resolved; None when it is gone or not ours to inspect."""
    psutil = _psutil()
    try:
        if psutil is not None:
            return Path(psutil.Process(pid).cwd()).resolve()
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except Exception:  # gone, or not ours to inspect
        return None


def is_postmaster_of(pid: int, data_dir: Path, written: float | None = None) -> bool:
    """Whether ``pid`` is proven to be the PostgreSQL server of ``data_dir``.

    A ``postmaster.pid`` outlives a killed server, and its pid may since belong to anything
    (a process of the server's user, another project's server): signalling it on the file's
    word alone could end a process the kit never started. Proof: the process runs a
    ``postgres`` binary whose ``-D`` names ``data_dir``, its working folder (the server
    changes into its data folder) is ``data_dir`` when that can be read, and it did not start
    after ``written`` (the pid file's mtime: the server wrote the file after it started).
    """
    if pid <= 0 or not pid_running(pid):
        return False
    args = process_args(pid)
    if not args or Path(args[0]).name not in _SERVER_NAMES:
        return False
    target = data_dir.resolve()
    cwd = process_cwd(pid)
    if cwd is not None and cwd != target:
        return False
    named = _data_arg(args)
    if named is not None and Path(named).is_absolute():
        if Path(named).resolve() != target:
            return False
    elif cwd is None:  # neither an absolute -D nor the working folder tells
        return False
    started = process_started_at(pid)
    return written is None or started is None or started <= written + 1.0


def postmasters_of(data_dir: Path) -> list[int]:
    """The pids of every running PostgreSQL server of ``data_dir`` (by ``is_postmaster_of``).

    For a ``postmaster.pid`` that names no live server of the folder: a server may still run
    there (the file was damaged while it ran), and a second one must never start beside it.
    Empty where processes cannot be listed (neither psutil nor /proc).
    """
    return [pid for pid in _all_pids() if is_postmaster_of(pid, data_dir)]


def pg_ctls_of(data_dir: Path) -> list[int]:
    """The pids of every running ``pg_ctl`` whose ``-D`` is ``data_dir``."""
    return [
        pid
        for pid in _all_pids()
        if (args := process_args(pid))
        and Path(args[0]).name == "pg_ctl"
        and _data_arg(args) == str(data_dir)
    ]


def process_args(pid: int) -> list[str]:
    """The command line of ``pid``; empty when it is gone or cannot be read."""
    psutil = _psutil()
    if psutil is not None:
        try:
            return [str(arg) for arg in psutil.Process(pid).cmdline()]
        except Exception:  # NoSuchProcess, AccessDenied, ZombieProcess
            return []
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [os.fsdecode(arg) for arg in raw.split(b"\0") if arg]
    try:  # e.g. macOS without psutil; paths with spaces are not told apart here
        result = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return result.stdout.split() if result.returncode == 0 else []


def process_started_at(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch (Linux /proc, else psutil)."""
    psutil = _psutil()
    if psutil is not None:
        try:
            return float(psutil.Process(pid).create_time())
        except Exception:  # NoSuchProcess, AccessDenied, ...
            return None
    ticks = _start_by_clock(pid, "proc")
    if ticks is None:
        return None
    try:
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _data_arg(args: list[str]) -> str | None:
    for index, arg in enumerate(args[1:], start=1):
        if arg == "-D" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("-D") and len(arg) > 2:
            return arg[2:]
    return None


def resume_server(postmaster: int) -> None:
    """Let a stopped server (SIGSTOP: a frozen host, a debugger) and its children go on
    (SIGCONT), so that a shutdown request reaches them. A no-op for running processes."""
    for pid in [postmaster, *children_of(postmaster)]:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)


def children_of(parent: int) -> list[int]:
    """The pids whose parent is ``parent`` (empty where processes cannot be listed)."""
    children = []
    for pid in _all_pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            if int(fields[1]) == parent:  # field 4, ppid
                children.append(pid)
        except (OSError, IndexError, ValueError):
            continue
    return children


def _all_pids() -> Iterator[int]:
    psutil = _psutil()
    if psutil is not None:
        yield from psutil.pids()
        return
    with contextlib.suppress(OSError):
        yield from (int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit())


def _proc_state(pid: int) -> str | None:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rpartition(")")[2].split()[0]


def _start_by_clock(pid: int, clock: object) -> float | None:
    if clock == "psutil":  # also in owner files written where /proc was not used
        psutil = _import_psutil()
        if psutil is None:
            return None
        try:
            return float(psutil.Process(pid).create_time())
        except Exception:  # NoSuchProcess, AccessDenied, ...
            return None
    if clock == "proc":
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            return float(fields[19])  # field 22, starttime, in clock ticks since boot
        except (OSError, IndexError, ValueError):
            return None
    return None


def _psutil() -> ModuleType | None:
    """psutil where /proc cannot answer, else None."""
    return None if _PROC else _import_psutil()


def _import_psutil() -> ModuleType | None:
    try:
        return importlib.import_module("psutil")
    except ImportError:
        return None
