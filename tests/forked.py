"""Run a pytest sub-session as a fork of a process that has the heavy libraries imported.

``run_forked`` is a stand-in for ``pytester.runpytest_subprocess``: the same command line
(``--basetemp`` in pytester's folder, the same environment with the folder on $PYTHONPATH),
the same folder, the same ``RunResult``, the same timeout. The difference is where the
process comes from: a fork of this test process's ``zygote.py`` (one per test process,
started on first use, ended with it) rather than a new interpreter, so SQLAlchemy, psycopg,
FastAPI and the rest are not imported again by every sub-session. See ``zygote.py`` for what
is imported there and what each sub-session still imports itself.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from zygote import PRELOAD

ZYGOTE = Path(__file__).with_name("zygote.py")
PYTEST_MAIN = str(Path(pytest.__file__).with_name("__main__.py"))


class ZygoteGone(Exception):
    """The zygote process ended or stopped answering; the caller falls back to a subprocess."""


class Zygote:
    """The forking process of this test process, started on first use."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self.lock = threading.Lock()  # one sub-session at a time: the protocol is sequential

    def _started(self) -> subprocess.Popen[str]:
        process = self._process
        if process is None or process.poll() is not None:
            env = dict(os.environ)
            env.pop("PYTHONPATH", None)  # each request brings its own
            process = subprocess.Popen(
                [sys.executable, str(ZYGOTE)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd="/",
            )
            self._process = process
        return process

    def run(self, request: dict[str, Any], timeout: float) -> tuple[int, bool]:
        """Run one sub-session; its exit code, and whether it was killed at the timeout."""
        process = self._started()
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
        except OSError as exc:
            raise ZygoteGone(str(exc)) from exc
        pid = self._read(process, timeout=60.0)["pid"]
        timed_out = False
        # From here on the sub-session runs: a zygote lost now fails the test (running the
        # sub-session again would run it twice).
        try:
            reply = self._read(process, timeout=timeout)
        except ZygoteGone as exc:
            raise RuntimeError(f"the zygote died while pid {pid} ran: {exc}") from exc
        except TimeoutError:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            reply = self._read(process, timeout=60.0)
        return int(reply["exit"]), timed_out

    def _read(self, process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([process.stdout], [], [], left)
            if ready:
                line = process.stdout.readline()
                if not line:
                    raise ZygoteGone(f"the zygote ended with {process.wait()}")
                message: dict[str, Any] = json.loads(line)
                return message

    def close(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


PRELOADED_PACKAGES = frozenset(name.partition(".")[0] for name in PRELOAD)


def shadows_a_preloaded_module(folder: Path) -> bool:
    """Whether the project has a module or package named as one the zygote imported (a test
    of "not installed"): a new interpreter imports the project's, a fork would keep the
    zygote's."""
    return any(
        (folder / name).is_dir() or (folder / f"{name}.py").exists() for name in PRELOADED_PACKAGES
    )


_ZYGOTE = Zygote()
atexit.register(_ZYGOTE.close)


def run_forked(pytester: pytest.Pytester, *args: str, timeout: float) -> pytest.RunResult | None:
    """Run ``pytest <args>`` in pytester's folder as a fork of the zygote; None when the
    zygote is busy (another thread's sub-session) or gone: then run it as a subprocess."""
    __tracebackhide__ = True
    cwd = str(Path.cwd())  # pytester's folder: it chdirs there for the test
    if shadows_a_preloaded_module(Path(cwd)):
        return None
    if not _ZYGOTE.lock.acquire(blocking=False):
        return None
    try:
        basetemp = tempfile.mkdtemp(prefix="runpytest-", dir=pytester.path)
        full_args = [f"--basetemp={basetemp}", *args]
        env = dict(os.environ)
        pythonpath = [cwd, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
        stdout = pytester.path / "stdout"
        stderr = pytester.path / "stderr"
        request = {
            "args": full_args,
            "argv0": PYTEST_MAIN,
            "cwd": cwd,
            "env": env,
            "path": pythonpath,
            "stdout": str(stdout),
            "stderr": str(stderr),
        }
        print("running (forked): pytest", *full_args)
        print("     in:", cwd)
        started = time.monotonic()
        try:
            code, timed_out = _ZYGOTE.run(request, timeout)
        except ZygoteGone:
            return None
        if timed_out:
            for path, stream in ((stdout, sys.stdout), (stderr, sys.stderr)):
                print(path.read_text(encoding="utf8", errors="replace"), file=stream)
            raise pytester.TimeoutExpired(
                f"{timeout} second timeout expired running: pytest {full_args}"
            )
        out = stdout.read_text(encoding="utf8").splitlines()
        err = stderr.read_text(encoding="utf8").splitlines()
        for lines, stream in ((out, sys.stdout), (err, sys.stderr)):
            for line in lines:
                print(line, file=stream)
        ret: int | pytest.ExitCode = code
        with contextlib.suppress(ValueError):
            ret = pytest.ExitCode(code)
        return pytest.RunResult(ret, out, err, time.monotonic() - started)
    finally:
        _ZYGOTE.lock.release()
