"""Backends: which library really runs the code, and the guard against anyio's runner reuse."""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .warnings import TestkitWarning

# The docstring of anyio_backend, both copies of it (the fixtures module's and the plugin's):
# pytest --fixtures shows it.
ANYIO_BACKEND_DOC = """\
The backend the current test runs on, from ``testkit_backends`` (default ``asyncio``).

Session-scoped, so all tests of one backend share one event loop; pytest groups the tests
by backend and builds the kit's per-backend fixtures once for each. Override it in
conftest.py, session-scoped (``@pytest.fixture(scope="session")``), to pin a backend
(``return "trio"``) or pass options (``return ("asyncio", {"use_uvloop": True})``);
``testkit_backends`` then no longer applies to the tests it covers (the kit warns when it is
set). Cost: nothing per test.
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


# Where the kit's own anyio_backend fixtures are defined (the plugin's session module makes
# them in plugin.py; fixtures.py holds the copy for conftest.py files), and anyio's.
_KIT_PACKAGE = __name__.split(".")[0]
_ANYIO_PLUGIN = "anyio.pytest_plugin"


@dataclass
class BackendOverride:
    """An ``anyio_backend`` fixture of the project's own that replaces the kit's for some tests."""

    where: str  # "path/conftest.py:12"
    scope: str
    tests: int = 0  # tests whose anyio_backend it is
    kit_tests: int = 0  # of those, the async tests the kit runs (on its session-scoped loop)


def _active_backend_fixture(session: pytest.Session, item: pytest.Item) -> Any:
    """The ``anyio_backend`` fixture definition that ``item`` gets, or None.

    pytest has no public way to ask which definition of a fixture a test gets; this is the
    kit's only use of its fixture manager (``session._fixturemanager.getfixturedefs``, pytest
    8.1+), kept here. The last definition visible to the test is the one it gets.
    """
    manager = getattr(session, "_fixturemanager", None)
    getfixturedefs = getattr(manager, "getfixturedefs", None)
    if getfixturedefs is None:
        return None
    definitions = getfixturedefs("anyio_backend", item)
    return definitions[-1] if definitions else None


def _location(func: Any, rootpath: Path) -> str:
    code = getattr(func, "__code__", None)
    try:
        filename = inspect.getsourcefile(func) or ""
    except TypeError:
        filename = ""
    if not filename or code is None:
        return repr(func)
    path = Path(filename)
    try:
        shown = str(path.relative_to(rootpath))
    except ValueError:
        shown = str(path)
    return f"{shown}:{code.co_firstlineno}"


def backend_overrides(session: pytest.Session) -> list[BackendOverride]:
    """The project's own ``anyio_backend`` fixtures that the collected tests get instead of the
    kit's (which reads ``testkit_backends``), with how many tests get each."""
    found: dict[int, BackendOverride] = {}
    by_parent: dict[int, Any] = {}
    for item in session.items:
        names = getattr(item, "fixturenames", ())
        if "anyio_backend" not in names:
            continue
        # Tests of one module or class see the same definitions: one look-up for them all.
        parent = id(item.parent)
        if parent not in by_parent:
            by_parent[parent] = _active_backend_fixture(session, item)
        definition = by_parent[parent]
        func = getattr(definition, "func", None)
        module = getattr(func, "__module__", None) or ""
        if func is None or module == _ANYIO_PLUGIN or module.partition(".")[0] == _KIT_PACKAGE:
            continue
        override = found.get(id(definition))
        if override is None:
            where = _location(func, session.config.rootpath)
            override = found[id(definition)] = BackendOverride(where, definition.scope)
        override.tests += 1
        if "_testkit_loop" in names:
            override.kit_tests += 1
    return list(found.values())


def check_backend_overrides(session: pytest.Session, setting: str | None) -> None:
    """Stop the run at an ``anyio_backend`` override the kit's tests cannot run with; warn once
    when one makes ``setting`` (``testkit_backends`` / ``--testkit-backends``, when set)
    silently ineffective."""
    overrides = backend_overrides(session)
    for override in overrides:
        if override.scope != "session" and override.kit_tests:
            raise pytest.UsageError(
                f"The anyio_backend fixture at {override.where} is {override.scope}-scoped, "
                f"and {override.kit_tests} async test(s) get it. The kit runs async tests on one "
                "event loop per backend, kept by session-scoped fixtures that depend on "
                "anyio_backend (the shared loop, app_lifespan, db_engine), so each of those "
                "tests would error with a ScopeMismatch. Fix one of: make it session-scoped "
                '(@pytest.fixture(scope="session")); or remove it and choose the backends '
                "with the testkit_backends ini option (or --testkit-backends)."
            )
    if setting is None:
        return
    for override in overrides:
        message = (
            f"{setting} has no effect on the {override.tests} test(s) that get the "
            f"anyio_backend fixture defined at {override.where}: that fixture decides their "
            "backend, not the setting (the kit's own anyio_backend, which that fixture "
            "replaces, is what reads it). Fix one of: remove that fixture to let the setting "
            "choose the backends; or unset the setting if the fixture is meant to choose."
        )
        filename, _, line = override.where.rpartition(":")
        try:
            warnings.warn_explicit(
                message,
                TestkitWarning,
                filename or override.where,
                int(line) if line.isdigit() else 0,
            )
        except TestkitWarning as exc:  # turned into an error (-W error, filterwarnings)
            raise pytest.UsageError(str(exc)) from None
