"""The package's public names: each resolves, the heavy ones only when first used."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import Project

import anyio_fastapi_testkit as kit


def test_every_public_name_resolves() -> None:
    from anyio_fastapi_testkit._http import client as _client
    from anyio_fastapi_testkit._http import websocket as _websocket
    from anyio_fastapi_testkit._isolation import factories as _factories

    assert {name for name in kit.__all__ if not hasattr(kit, name)} == set()
    assert kit.persist_with is _factories.persist_with
    assert kit.override_dependencies is _client.override_dependencies
    assert kit.WebSocketClosed is _websocket.WebSocketClosed
    assert set(kit.__all__) <= set(dir(kit))


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


def test_the_fixtures_module_makes_its_conftest_copies_on_access() -> None:
    from anyio_fastapi_testkit import fixtures

    # Not module attributes (the plugin registers only its bound copies), yet importable.
    assert "app" not in vars(fixtures)
    assert fixtures.app.__name__ == "app"
    assert "The app under test" in (fixtures.app.__doc__ or "")
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
