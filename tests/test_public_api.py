"""The package's public names: each resolves, the heavy ones only when first used."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from conftest import Project

import anyio_fastapi_testkit as kit

# Every public name and the private module that defines it: adding, removing or moving a
# public name must change this list.
PUBLIC_NAMES = {
    "AppError": "_core.errors",
    "BlockedLoopWarning": "_core.warnings",
    "CacheWarning": "_postgres.cache",
    "ClientFactory": "_http.client",
    "ClientOptions": "_http.client",
    "ConfigError": "_core.errors",
    "DatabaseError": "_core.errors",
    "ForeignDatabaseError": "_provisioning.foreign_guard",
    "LeakedTaskWarning": "_core.warnings",
    "QueryCounter": "_diagnostics.queries",
    "QueryLimit": "_diagnostics.queries",
    "QueryLog": "_diagnostics.queries",
    "TestkitError": "_core.errors",
    "TestkitWarning": "_core.warnings",
    "WebSocketClosed": "_http.websocket",
    "WebSocketConnect": "_http.websocket",
    "WebSocketRejected": "_http.websocket",
    "WebSocketSession": "_http.websocket",
    "override_dependencies": "_http.client",
    "persist_with": "_isolation.factories",
}


def test_the_public_names_are_these_and_each_is_its_modules_object() -> None:
    assert sorted(kit.__all__) == sorted(PUBLIC_NAMES)
    wrong = {}
    for name, module in PUBLIC_NAMES.items():
        where = f"anyio_fastapi_testkit.{module}"
        value = getattr(kit, name)
        if value is not getattr(importlib.import_module(where), name) or value.__module__ != where:
            wrong[name] = value.__module__
    assert wrong == {}


# The fixtures that `from anyio_fastapi_testkit.fixtures import *` gives a conftest.py.
FIXTURE_NAMES = [
    "anyio_backend",
    "app",
    "app_lifespan",
    "assert_max_queries",
    "assert_num_queries",
    "client",
    "client_factory",
    "count_queries",
    "database_url",
    "db_connection",
    "db_engine",
    "db_session",
    "db_session_sync",
    "dependency_overrides",
    "live_server",
    "websocket_connect",
]


def test_import_star_from_the_fixtures_module_gives_these_fixtures() -> None:
    namespace: dict[str, object] = {}
    exec("from anyio_fastapi_testkit.fixtures import *", namespace)
    imported = sorted(name for name in namespace if name != "__builtins__")
    assert imported == FIXTURE_NAMES
    # Fixtures, not plain functions: pytest >= 8.4 wraps them in a definition object; older
    # releases mark the function (the listing test below checks them as pytest sees them).
    not_fixtures = [
        name
        for name in FIXTURE_NAMES
        if type(namespace[name]).__name__ != "FixtureFunctionDefinition"
        and not hasattr(namespace[name], "_pytestfixturefunction")
    ]
    assert not_fixtures == []


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        kit.nothing_here  # noqa: B018


def test_loading_the_plugin_loads_no_database_library() -> None:
    # pytest loads the plugin in every process, pytest-xdist's controller too, which needs
    # neither SQLAlchemy nor psycopg before it has started the workers.
    code = (
        "import sys, anyio_fastapi_testkit.plugin; "
        "print(sorted(m for m in ('sqlalchemy', 'psycopg', 'fastapi', 'httpx') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


NO_DATABASE_TESTS = """
import sys


async def test_async(anyio_backend):
    pass


def test_sync():
    pass


async def test_failing():
    # A failure: the kit's report hook asks whether the database server was lost.
    assert 1 == 2


def test_zz_nothing_of_the_database_stack_was_loaded():
    stack = ("sqlalchemy", "psycopg", "asyncpg", "httpx", "starlette")
    loaded = [name for name in stack if name in sys.modules]
    assert loaded == []
"""


def test_a_run_without_the_database_loads_no_database_library(project: Project) -> None:
    # The plugin registers the fixtures module in every run: its database and HTTP stacks
    # are loaded by the fixtures that use them.
    project.module("test_plain", NO_DATABASE_TESTS)
    # A new interpreter: a forked sub-session starts with the stack imported (see forked.py).
    project.run("-p", "no:randomly", fresh=True).assert_outcomes(passed=3, failed=1)


def test_the_fixtures_module_makes_its_anyio_backend_copy_on_access() -> None:
    from anyio_fastapi_testkit import fixtures

    # Not a module attribute (the plugin registers the session's own), yet importable.
    assert "anyio_backend" not in vars(fixtures)
    assert fixtures.anyio_backend.__name__ == "anyio_backend"
    assert "backend" in (fixtures.anyio_backend.__doc__ or "")
    # The others are the module's own, one definition each.
    assert "app" in vars(fixtures)
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        fixtures.nothing_here  # noqa: B018


# Loaded with -p ahead of the kit: pretends to be Windows from the start of pytest_configure.
WINDOWS_SIMULATION = """
import sys

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    sys.platform = "win32"
"""


def test_windows_is_refused_once_with_what_is_unsupported(project: Project) -> None:
    project.ini(testkit_app="simple_app:app")
    project.module("windows_simulation", WINDOWS_SIMULATION)
    project.module("test_nothing", "def test_nothing():\n    pass\n")
    result = project.run("-p", "windows_simulation")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: anyio-fastapi-testkit supports POSIX systems only (Linux, macOS), and this "
            "is Windows (sys.platform == 'win32'). Unsupported there: the embedded PostgreSQL "
            "server *To fix: run the tests under WSL 2 or in a Linux container, or*"
            "-p no:anyio_fastapi_testkit.plugin*"
        ]
    )
    assert str(result.stderr).count("supports POSIX systems only") == 1
    result.stdout.no_fnmatch_line("*test_nothing*")
    # The way out the message gives works: without the kit, the run goes on.
    without_kit = project.run("-p", "windows_simulation", "-p", "no:anyio_fastapi_testkit.plugin")
    without_kit.assert_outcomes(passed=1)


def test_python_m_help_prints_the_usage_on_stdout() -> None:
    for flag in ("--help", "-h"):
        done = subprocess.run(
            [sys.executable, "-m", "anyio_fastapi_testkit", flag],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        assert done.stdout.startswith("usage: python -m anyio_fastapi_testkit doctor ")
        assert "pytest --testkit-doctor" in done.stdout


def test_fixture_listing_shows_a_first_line_per_fixture_and_marks_the_internal_ones(
    project: Project,
) -> None:
    from anyio_fastapi_testkit import fixtures

    project.ini(testkit_app="simple_app:app")
    listing = project.run("--fixtures")
    assert listing.ret == pytest.ExitCode.OK
    lines = listing.stdout.lines
    shown = {line.split(" ")[0]: lines[i + 1] for i, line in enumerate(lines[:-1])}
    for name in fixtures.__all__:
        assert name in shown, name
        assert shown[name].startswith("    ") and "no docstring" not in shown[name], name
    assert not [name for name in shown if name.startswith("_testkit")]

    verbose = project.run("--fixtures", "-v")
    lines = verbose.stdout.lines
    private = {
        line.split(" ")[0]: lines[i + 1]
        for i, line in enumerate(lines[:-1])
        if line.startswith("_testkit") and " -- " in line
    }
    # The session's backend under the name the conftest.py copies ask for: it is the same
    # fixture as anyio_backend, with its docstring.
    private.pop("_testkit_backend")
    assert len(private) >= 9, verbose.stdout.str()
    assert {name: doc for name, doc in private.items() if "Internal to the kit: " not in doc} == {}
    # One line each: the next line is the blank one between fixtures.
    next_lines = [lines[lines.index(doc) + 1] for doc in private.values()]
    assert set(next_lines) == {""}
