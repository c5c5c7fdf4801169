"""Children of the kit that must not outlive the pytest process that started them.

The kit runs helpers (initdb, pg_ctl, useradd, ``postgres --version``) and the Alembic
subprocess, and waits for each. A pytest killed meanwhile (SIGKILL, an OOM kill, a CI job
cancelled) cannot end them itself: on Linux the kernel is asked to (``PR_SET_PDEATHSIG``), so
such a child gets SIGKILL as soon as its parent dies. Elsewhere, the Alembic subprocess watches
its parent itself (``WATCH_PARENT``); the server, which is meant to outlive the helper that
started it (pg_ctl forks it, and a fork clears the setting), is ended by the next run's orphan
cleanup (``orphans``, ``cache.stop_abandoned``).

Linux sends the signal when the *thread* that started the child ends, not the process. The
ways in are ``run`` here and ``sysuser.spawn`` (pg_ctl, watched while it runs): both wait for
the child in the thread that started it, so that thread outlives the child, whichever thread
it is (the kit builds its databases in worker threads).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # no C library to call (e.g. a static interpreter)
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


# Looked up here, once: the function below runs in the child between fork and exec, where
# importing or loading anything could deadlock on a lock another thread of pytest held.
_PRCTL = _load_prctl()


def end_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes Linux SIGKILL the child when this process dies; None
    where the kernel offers no such thing."""
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()
    kill = int(signal.SIGKILL)

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, kill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the setting took: too late
            os.kill(os.getpid(), kill)

    return in_child


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run``, with a child that dies with this process (see the module's doc).

    Takes ``subprocess.run``'s keyword arguments, but ``preexec_fn``.
    """
    return subprocess.run(command, preexec_fn=end_with_parent(), **kwargs)


# The start of a Python child's script (the Alembic subprocess): the same where the kernel
# does not send the signal, by a thread that ends the process once its parent is gone. The
# parent's pid comes in TESTKIT_PARENT_PID.
WATCH_PARENT = """
import os as _os
import threading as _threading
import time as _time

_parent = int(_os.environ.pop("TESTKIT_PARENT_PID", "0") or 0)


def _watch_parent():
    while _os.getppid() == _parent:
        _time.sleep(0.5)
    _os._exit(1)


if _parent:
    _threading.Thread(target=_watch_parent, name="testkit-parent-watch", daemon=True).start()
"""


def parent_env() -> dict[str, str]:
    """The environment entry ``WATCH_PARENT`` reads."""
    return {"TESTKIT_PARENT_PID": str(os.getpid())}
