"""Errors once, short, at the right place (issue 17, item 8).

A set-up failure of the kit stops the session at the first test that meets it, with one short
report; a failing test's report costs what it costs without the kit; the kit's frames are
hidden from tracebacks; a lifespan that stops on a missing setting points at
``testkit_database_env``; a skip on trio points at the test; an ``anyio_backend`` override is
not silently stronger than ``testkit_backends``, nor a bare ScopeMismatch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import ITEMS_APP, Project

import anyio_fastapi_testkit
from anyio_fastapi_testkit._postgres.server import RunningServer

UNREACHABLE = "postgresql://u:s3cretpw@127.0.0.1:1/db"
# What a frame of the kit's own looks like in a traceback (absolute or relative path).
KIT_FRAME = f"{Path(anyio_fastapi_testkit.__file__).parent.name}{os.sep}"

# One test that needs no database, then six that need the kit's set-up in different ways.
SETUP_TESTS = """
def test_0_no_database():
    pass

async def test_1_session(db_session):
    pass

async def test_2_client(client):
    await client.get("/health")

def test_3_url(database_url):
    pass

async def test_4_connection(db_connection):
    pass

async def test_5_both(client, db_session):
    pass

async def test_6_session_again(db_session):
    pass
"""


@pytest.fixture(autouse=True)
def _no_configured_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESTKIT_DATABASE_URL", raising=False)


def output_of(result: pytest.RunResult) -> str:
    return "\n".join([*result.outlines, *result.errlines])


def items_project(project: Project, **settings: str) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(**{"testkit_app": "items_app:app", **settings})
    project.module("test_setup", SETUP_TESTS)


def assert_stopped_once(result: pytest.RunResult, error: str, message: str) -> None:
    """The first test that needs the kit's set-up errors with ``message``, reported once and
    without library frames; the session stops there and says why; the rest are not run."""
    output = output_of(result)
    result.assert_outcomes(passed=1, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert output.count("ERROR at setup of") == 1, output
    assert message in output, output
    result.stdout.fnmatch_lines(
        [
            f"*anyio-fastapi-testkit could not set up test_setup.py::test_1_session: {error}:*"
            "reported once, above; the session stops here (5 more tests not run)*"
        ]
    )
    errors = output.partition("= ERRORS =")[2].partition("short test summary info")[0]
    assert KIT_FRAME not in errors and "site-packages" not in errors, errors
    assert "s3cretpw" not in output


@pytest.mark.parametrize("how", ["flag", "env"])
def test_an_unreachable_server_stops_the_session_once(
    project: Project, private_tmpdir: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    items_project(project)
    args = [f"--testkit-db-url={UNREACHABLE}"] if how == "flag" else []
    if how == "env":
        monkeypatch.setenv("TESTKIT_DATABASE_URL", UNREACHABLE)
    result = project.run(*args)
    assert_stopped_once(
        result,
        "DatabaseError",
        "or unset all three to have the kit start an embedded server",
    )


def test_a_wrong_password_stops_the_session_once(
    project: Project, pg_server: RunningServer
) -> None:
    wrong = pg_server.info.admin_url.set(password="s3cretpw")
    items_project(project)
    result = project.run(f"--testkit-db-url={wrong.render_as_string(hide_password=False)}")
    assert_stopped_once(result, "DatabaseError", "password authentication failed for user")


def test_a_wrong_schema_path_stops_the_session_once(project: Project, private_tmpdir: Path) -> None:
    items_project(project, testkit_schema="nowhere_models:Base.metadata")
    result = project.run()
    assert_stopped_once(
        result, "ConfigError", "module 'nowhere_models' cannot be imported (No module named"
    )


def test_a_session_dependency_the_app_does_not_use_stops_the_session_once(
    project: Project, private_tmpdir: Path
) -> None:
    items_project(
        project,
        testkit_schema="items_app:Base.metadata",
        testkit_session_dependency="items_app:unused_dependency",
    )
    result = project.run()
    assert_stopped_once(result, "ConfigError", "so overriding it would change nothing")


@pytest.mark.parametrize(
    ("settings", "keeper"),
    [
        pytest.param({"testkit_sessionmaker": "items_app:app"}, "load_once", id="config-error"),
        pytest.param({"testkit_database_url": UNREACHABLE}, "working_url", id="database-error"),
    ],
)
def test_a_kept_error_raised_again_does_not_carry_the_earlier_raises(
    project: Project, private_tmpdir: Path, settings: dict[str, str], keeper: str
) -> None:
    # The kit keeps a failed set-up's error and raises it again for the next test that asks:
    # at set-up the session stops first, but a test body that asks for a fixture meets it
    # too. Raised again as the same object, its traceback grew by every earlier raise.
    project.module("items_app", ITEMS_APP)
    project.ini(testkit_app="items_app:app", **settings)
    project.module(
        "test_again",
        "".join(
            f"def test_{n}(request):\n    request.getfixturevalue('db_session_sync')\n\n"
            for n in range(4)
        ),
    )
    result = project.run("--tb=native")
    result.assert_outcomes(failed=4)
    sections = re.split(r"_{3,} test_\d _{3,}", result.stdout.str())[1:]
    # The frame of the function that keeps the error and raises it again: once per report.
    raises = [section.count(f", in {keeper}\n") for section in sections]
    assert raises == [1, 1, 1, 1], raises


# --- a failing test's report ----------------------------------------------------------------

COUNT_REPORTS = """
import pytest

rendered = []
_getrepr = pytest.ExceptionInfo.getrepr


def counting_getrepr(self, *args, **kwargs):
    rendered.append(kwargs.get("style"))
    return _getrepr(self, *args, **kwargs)


pytest.ExceptionInfo.getrepr = counting_getrepr


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"tracebacks rendered: {len(rendered)}")
"""


def rendered(result: pytest.RunResult) -> int:
    (line,) = [line for line in result.outlines if line.startswith("tracebacks rendered:")]
    return int(line.rpartition(":")[2])


def test_a_failing_test_costs_one_rendered_traceback_as_without_the_kit(
    project: Project,
) -> None:
    project.ini()
    project.pytester.makeconftest(COUNT_REPORTS)
    project.module(
        "test_sync",
        "".join(f"def test_{n}():\n    assert {n} == -1\n\n" for n in range(3)),
    )
    # Async tests too (with the kit), in the same run: 3 reports each.
    project.module(
        "test_async",
        "".join(f"async def test_{n}():\n    assert {n} == -1\n\n" for n in range(3)),
    )
    with_kit = project.run("--tb=short", "-rA", "test_sync.py", "test_async.py")
    with_kit.assert_outcomes(failed=6)
    for module in ("test_sync", "test_async"):
        with_kit.stdout.fnmatch_lines([f"FAILED {module}.py::test_{n} *" for n in range(3)])
    without_kit = project.run("--tb=short", "-p", "no:anyio_fastapi_testkit.plugin", "test_sync.py")
    without_kit.assert_outcomes(failed=3)
    assert rendered(without_kit) == 3
    assert rendered(with_kit) == 6
    # And with --tb=no (pytest still makes each report once).
    result = project.run("--tb=no", "test_async.py")
    result.assert_outcomes(failed=3)
    assert rendered(result) == 3


# --- the kit's frames -----------------------------------------------------------------------

FAILING_APP_TESTS = """
import pytest

from items_app import Item, app


@app.get("/boom")
async def boom():
    raise ValueError("boom in the app")


@pytest.fixture
async def seeded(db_session):
    db_session.add(Item(name="seed"))
    raise RuntimeError("seeding failed")


async def test_app_raises(client, db_session):
    await client.get("/boom")


async def test_streamed_app_raises(client, db_session):
    async with client.stream("GET", "/boom"):
        pass


async def test_own_fixture_fails(seeded, client):
    pass


async def test_assertion(client, db_session):
    db_session.add(Item(name="a"))
    assert (await client.get("/items")).json() == ["b"]
"""


@pytest.mark.parametrize("timeout", ["", "30"])
def test_tracebacks_show_no_frame_of_the_kit(project: Project, timeout: str) -> None:
    project.module("items_app", ITEMS_APP)
    settings = {
        "testkit_app": "items_app:app",
        "testkit_schema": "items_app:Base.metadata",
        "testkit_session_dependency": "items_app:get_session",
    }
    if timeout:
        settings["testkit_timeout"] = timeout  # the kit's timed wrappers run the fixtures
    project.ini(**settings)
    project.module("test_failing", FAILING_APP_TESTS)
    result = project.run("--tb=long")
    result.assert_outcomes(failed=3, errors=1)
    output = output_of(result)
    assert output.count("ValueError: boom in the app") >= 2
    assert "RuntimeError: seeding failed" in output
    assert "assert ['a'] == ['b']" in output
    kit_lines = [line for line in output.splitlines() if KIT_FRAME in line]
    assert kit_lines == []


# --- a lifespan that stops on a missing setting ---------------------------------------------

LIFESPAN_APP = """
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic_settings import BaseSettings


class Settings(BaseSettings):
    secret_key: str


@asynccontextmanager
async def lifespan(app):
    {startup}
    yield


app = FastAPI(lifespan=lifespan)
"""


@pytest.mark.parametrize(
    ("startup", "missing"),
    [
        pytest.param('os.environ["APP_SECRET"]', "APP_SECRET", id="os.environ"),
        pytest.param("Settings()", "secret_key", id="pydantic-settings"),
        pytest.param('{}["user_id"]', None, id="not-a-setting"),
    ],
)
def test_a_lifespan_stopped_by_a_missing_setting_points_at_database_env(
    project: Project, startup: str, missing: str | None
) -> None:
    project.ini(testkit_app="settings_app:app")
    project.module("settings_app", LIFESPAN_APP.replace("{startup}", startup))
    project.module("test_any", "async def test_one(client):\n    pass\n")
    result = project.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*lifespan startup of the app (FastAPI*) raised*"])
    if missing is None:
        assert "testkit_database_env" not in result.stdout.str()
    else:
        result.stdout.fnmatch_lines(
            [f"*missing setting ({missing})*testkit_database_env may be the fix*NAME=value*"]
        )


def test_an_app_import_stopped_by_a_missing_setting_points_at_database_env(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Missing in the sub-session whatever this process's environment holds.
    monkeypatch.delenv("DATABASE_URL", raising=False)
    project.ini(testkit_app="import_app:app")
    project.module("import_app", "import os\n\nDATABASE_URL = os.environ['DATABASE_URL']\n")
    project.module("test_any", "async def test_one(client):\n    pass\n")
    result = project.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*testkit_app = 'import_app:app': importing 'import_app' raised KeyError*",
            "*missing setting (DATABASE_URL)*testkit_database_env may be the fix*",
        ]
    )


# --- a skip on trio -------------------------------------------------------------------------


SKIPPED_ON_TRIO = """\
async def test_fixture(db_session):
    pass


async def test_request(client):
    await client.get("/health")
    await client.get("/items")  # the session dependency
"""


def test_a_trio_skip_points_at_the_test(project: Project) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(
        testkit_app="items_app:app",
        testkit_schema="items_app:Base.metadata",
        testkit_session_dependency="items_app:get_session",
        testkit_backends="asyncio trio",
    )
    project.module("test_skip", SKIPPED_ON_TRIO)
    result = project.run("-rs")
    result.assert_outcomes(passed=2, skipped=2)
    skips = [line for line in result.outlines if line.startswith("SKIPPED")]
    # At set-up, the test's definition; during the call, the line that led to the skip.
    lines = SKIPPED_ON_TRIO.splitlines()
    definition = lines.index("async def test_fixture(db_session):") + 1
    request = lines.index('    await client.get("/items")  # the session dependency') + 1
    assert [line.partition(": this test needs the database")[0] for line in skips] == [
        f"SKIPPED [1] test_skip.py:{definition}",
        f"SKIPPED [1] test_skip.py:{request}",
    ], skips


# --- anyio_backend overridden in a conftest.py ----------------------------------------------

BACKEND_PROBE = """
from anyio_fastapi_testkit._core.backends import running_library

async def test_backend(anyio_backend):
    assert running_library() == anyio_backend == "asyncio"
"""


def override(scope: str) -> str:
    decorator = "@pytest.fixture" if scope == "function" else f'@pytest.fixture(scope="{scope}")'
    return f'import pytest\n\n{decorator}\ndef anyio_backend():\n    return "asyncio"\n'


@pytest.mark.parametrize(
    ("args", "ini", "setting"),
    [
        pytest.param(("--testkit-backends=trio",), {}, "--testkit-backends='trio'", id="flag"),
        pytest.param(
            (), {"testkit_backends": "asyncio trio"}, "testkit_backends = 'asyncio trio'", id="ini"
        ),
    ],
)
def test_backends_setting_overridden_by_a_conftest_is_not_silently_ignored(
    project: Project, args: tuple[str, ...], ini: dict[str, str], setting: str
) -> None:
    project.ini(**ini)
    project.pytester.makeconftest(override("session"))
    project.module("test_probe", BACKEND_PROBE)
    result = project.run(*args)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            f"*TestkitWarning: {setting} has no effect on the 1 test(s) that get the "
            "anyio_backend fixture defined at conftest.py:3*remove that fixture*unset the setting*"
        ]
    )
    # As an error where warnings are errors.
    result = project.run(*args, "-W", "error::anyio_fastapi_testkit.TestkitWarning")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{setting} has no effect*conftest.py:3*"])


def test_a_conftest_that_pins_the_backend_without_the_setting_gets_no_warning(
    project: Project,
) -> None:
    project.ini()
    project.pytester.makeconftest(override("session"))
    project.module("test_probe", BACKEND_PROBE)
    result = project.run()
    result.assert_outcomes(passed=1)
    assert "TestkitWarning" not in result.stdout.str()


@pytest.mark.parametrize("scope", ["function", "module"])
def test_a_narrower_anyio_backend_override_names_the_fix(project: Project, scope: str) -> None:
    project.ini()
    project.pytester.makeconftest(override(scope))
    project.module("test_probe", BACKEND_PROBE)
    result = project.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*The anyio_backend fixture at conftest.py:3 is {scope}-scoped, and 1 async "
            'test(s) get it*make it session-scoped (@pytest.fixture(scope="session"))*'
            "testkit_backends*"
        ]
    )
