"""Tell whether a process still runs, when it started, and in which folder."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType


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
    """The process's start time, and which clock measured it (psutil, else Linux /proc)."""
    for clock in ("psutil", "proc"):
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


def _proc_state(pid: int) -> str | None:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rpartition(")")[2].split()[0]


def _start_by_clock(pid: int, clock: object) -> float | None:
    if clock == "psutil":
        psutil = _psutil()
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
    try:
        return importlib.import_module("psutil")
    except ImportError:
        return None
