"""Backends: which library really runs the code, and the guard against anyio's runner reuse."""

from __future__ import annotations

import asyncio
import functools
import sys
from typing import Any

import pytest

# The docstring of anyio_backend, both copies of it (the fixtures module's and the plugin's):
# pytest --fixtures shows it.
ANYIO_BACKEND_DOC = """\
The backend the current test runs on, from ``testkit_backends`` (default ``asyncio``).

Session-scoped, so all tests of one backend share one event loop; pytest groups the tests
by backend and builds the kit's per-backend fixtures once for each. Override it in
conftest.py to pin a backend (``return "trio"``) or pass options
(``return ("asyncio", {"use_uvloop": True})``). Cost: nothing per test.
"""


def backend_name(anyio_backend: Any) -> str:
    """The name of a backend given as anyio accepts it: a name or a (name, options) tuple."""
    if isinstance(anyio_backend, str):
        return anyio_backend
    if isinstance(anyio_backend, tuple) and anyio_backend and isinstance(anyio_backend[0], str):
        return anyio_backend[0]
    raise TypeError(
        f"anyio_backend must be a name or a (name, options) tuple, not {anyio_backend!r}"
    )


@functools.cache
def _usefixtures_mark(names: tuple[str, ...]) -> pytest.Mark:
    return pytest.mark.usefixtures(*names).mark


def use_fixtures(test: object, names: tuple[str, ...]) -> None:
    """What ``@pytest.mark.usefixtures(*names)`` does to a test function, with one mark object
    for all tests: building the marker per test was most of the cost of the kit's collection
    hook."""
    marks = getattr(test, "pytestmark", [])
    # As pytest reads it: a list of marks, or a single one.
    test.pytestmark = [  # type: ignore[attr-defined]
        *(marks if isinstance(marks, list) else [marks]),
        _usefixtures_mark(names),
    ]


def running_library() -> str | None:
    """The async library actually running the current code, asked of the libraries themselves.

    Deliberately not sniffio or anyio's own cache: anyio's runner records the backend it was
    created for, which is exactly what is wrong when a runner is reused for another backend.
    """
    trio = sys.modules.get("trio")
    if trio is not None and in_trio_run(trio):
        return "trio"
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "asyncio"


def in_trio_run(trio: Any) -> bool:
    """Whether ``trio`` (the imported module) runs the current thread's code."""
    ask = getattr(trio.lowlevel, "in_trio_run", None)
    if ask is not None:
        return bool(ask())
    try:  # trio before 0.29
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


def check_backend(requested: str, item_name: str) -> None:
    """Fail the current test if it is not running on the backend its id names."""
    actual = running_library()
    if actual is None or actual == requested:
        return
    pytest.fail(
        f"{item_name} asked for the {requested} backend but is running on {actual}.\n"
        "anyio's pytest plugin keeps one test runner alive while any async fixture started on "
        "it is alive, and reuses it for later tests whatever backend they ask for. A "
        "session- or module-scoped async fixture that does not depend on `anyio_backend` "
        f"therefore keeps the {actual} loop running into the {requested} tests.\n"
        "Fix: add `anyio_backend` to the arguments of every higher-scoped async fixture "
        "(pytest then rebuilds it for each backend), or make it function-scoped.",
        pytrace=False,
    )


ASYNC_DRIVERS_ASYNCIO_ONLY = (
    "this test needs the database, whose async driver ({driver}) runs on asyncio only, so it "
    "is tested on the asyncio backend; db_session_sync works on every backend"
)
