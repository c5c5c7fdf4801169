"""``pytest --testkit-doctor``: each broken setting is named with its fix.

Every project also holds a test that would leave a file behind if it ran: the doctor must
report without running a test, and without leaving a server or a state folder behind.

Projects that need a database, or a fresh interpreter (what was imported before the kit),
run the doctor in a real sub-session; the others run it in this process
(``runpytest_inprocess``: the same ``pytest --testkit-doctor``, whose modules pytester
forgets after the run), as their checks start nothing and import only the project's app.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ITEMS_APP, SUBSESSION_TIMEOUT, Project, SubsessionShare, assert_nothing_left
from scaffolding import (
    UNREACHABLE_MASKED,
    UNREACHABLE_PASSWORD,
    UNREACHABLE_URL,
    output_of,
    shared_tmpdir_fixture,  # noqa: F401 (the shared_tmpdir fixture)
    write_alembic,
)

from anyio_fastapi_testkit.__main__ import main
from anyio_fastapi_testkit._postgres.server import RunningServer

ITEMS_SETTINGS = {
    "testkit_app": "items_app:app",
    "testkit_schema": "items_app:Base.metadata",
    "testkit_session_dependency": "items_app:get_session",
    "testkit_sessionmaker": "items_app:SessionLocal",
}

WOULD_RUN = """
from pathlib import Path


def test_must_not_run():
    Path("a-test-ran").write_text("the doctor ran a test")
"""

FAILING_LIFESPAN_APP = """
from contextlib import asynccontextmanager

from fastapi import FastAPI


@asynccontextmanager
async def lifespan(app):
    raise RuntimeError("the cache server is not reachable")
    yield


app = FastAPI(title="boom", lifespan=lifespan)
"""


pytestmark = pytest.mark.usefixtures("no_configured_server")


def doctor(
    project: Project, *args: str, in_process: bool = False, fresh: bool = False
) -> pytest.RunResult:
    """``pytest --testkit-doctor`` on the project: in a sub-session, or ``in_process`` for a
    project that needs no database (nothing is started: no cache, no server, no guard);
    ``fresh``: a new interpreter, for a project that hides an installed module."""
    project.module("test_would_run", WOULD_RUN)
    if in_process:
        with pytest.MonkeyPatch.context() as env:
            # Not one of the outer run's xdist workers, whose hand-over this process inherits.
            env.delenv("PYTEST_XDIST_WORKER", raising=False)
            result = project.pytester.runpytest_inprocess(
                "-p", "no:randomly", "-p", "no:cacheprovider", "--testkit-doctor", *args
            )
    elif fresh:
        result = project.run("--testkit-doctor", *args, fresh=True)
    else:
        result = project.run("--testkit-doctor", *args)
    assert not (project.pytester.path / "a-test-ran").exists()
    result.stdout.fnmatch_lines(["testkit doctor: * No test was run."])
    result.stdout.no_fnmatch_line("*collected*")
    result.stdout.no_fnmatch_line("*passed*")
    return result


def test_a_clean_project_is_all_ok_on_both_backends(project: Project, private_tmpdir: Path) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(**ITEMS_SETTINGS, testkit_backends="asyncio trio")
    result = doctor(project)
    result.stdout.fnmatch_lines(
        [
            "anyio-fastapi-testkit doctor, rootdir *",
            "OK       backend asyncio: *(from testkit_backends)",
            "OK       backend trio: trio * (from testkit_backends)",
            "OK       plugin anyio: *",
            "OK       plugin pytest-asyncio: pytest-asyncio * in strict mode is fine*",
            "OK       database server: embedded PostgreSQL * database test_app (ready in *; a "
            "throwaway cluster, deleted at the end: pytest's cache provider is disabled *",
            "OK       schema: testkit_schema = 'items_app:Base.metadata' built into the template "
            "(1 table: public.items)",
            "OK       database driver: psycopg * ran SELECT 1 on postgresql+psycopg://*:***@*",
            "OK       app: testkit_app = 'items_app:app' imported: FastAPI 'items'",
            "OK       lifespan on asyncio: startup and shutdown ran in *",
            "OK       lifespan on trio: startup and shutdown ran in *",
            # items_app builds its engine on the first request: nothing to see at import.
            "SKIP     app database: the app's modules hold no engine at import *",
            "SKIP     app driver: no engine of the app was found *",
            "OK       session dependency: testkit_session_dependency = 'items_app:get_session' is "
            "used by the app's routes; during each test it yields each request a session of its "
            "own on db_session's transaction",
            "OK       sessionmaker: testkit_sessionmaker = 'items_app:SessionLocal' is an "
            "async_sessionmaker; * (autoflush=True, expire_on_commit=False)",
            "testkit doctor: 12 OK, 0 PROBLEM, 2 SKIP; set-up looks right. No test was run.",
        ]
    )
    assert result.ret == 0
    assert_nothing_left(private_tmpdir)


def test_an_app_without_database_settings_skips_the_database(
    project: Project, private_tmpdir: Path
) -> None:
    # With pytest-trio (its stand-in) out of trio mode too: fine, no problem either.
    project.pytester.makeconftest(PYTEST_TRIO_STAND_IN)
    project.ini(testkit_app="simple_app:app", trio_mode="false")
    result = doctor(project, in_process=True)
    result.stdout.fnmatch_lines(
        [
            "OK       plugin pytest-trio: pytest-trio without trio_mode is fine*",
            "SKIP     database: none of testkit_database_url, testkit_schema, * is set; the db "
            "fixtures would start an embedded server (binaries in *",
            "OK       app: testkit_app = 'simple_app:app' imported: FastAPI 'simple'",
            "OK       lifespan on asyncio: *",
            "SKIP     session dependency: testkit_session_dependency is unset*",
            "testkit doctor: *, 0 PROBLEM, *",
        ]
    )
    assert result.ret == 0
    assert_nothing_left(private_tmpdir)  # nothing was started for it


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        (
            "missing_module:app",
            "PROBLEM  app: testkit_app = 'missing_module:app': module 'missing_module' cannot be "
            "imported *Check the spelling*`pythonpath` ini option.",
        ),
        (
            "broken_app:app",
            "PROBLEM  app: testkit_app = 'broken_app:app': importing 'broken_app' failed because "
            "it imports a missing module: No module named 'not_installed_anywhere'. Install it, "
            "or fix that import. (raised at */broken_app.py:3, in <module>)",
        ),
        (
            "simple_app:events",
            "PROBLEM  app: testkit_app = 'simple_app:events' is a list, not an ASGI app*",
        ),
    ],
)
def test_a_bad_app_setting_is_named_with_its_fix(
    project: Project, private_tmpdir: Path, setting: str, problem: str
) -> None:
    project.module("broken_app", "import os\n\nimport not_installed_anywhere\n")
    project.ini(testkit_app=setting)
    result = doctor(project, in_process=True)
    result.stdout.fnmatch_lines([problem, "SKIP     lifespan on asyncio: needs the app"])
    assert result.ret == 1
    assert_nothing_left(private_tmpdir)


def test_the_doctor_also_runs_as_a_module(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    project.ini(testkit_app="missing_module:app")
    result = project.pytester.run(
        sys.executable, "-m", "anyio_fastapi_testkit", "doctor", "-p", "no:cacheprovider"
    )
    result.stdout.fnmatch_lines(["PROBLEM  app: testkit_app = 'missing_module:app': *"])
    assert result.ret == 1

    # Without a command: the usage, from the module's main (the run above proved `-m` calls it).
    assert main([]) == pytest.ExitCode.USAGE_ERROR
    assert capsys.readouterr().err.startswith("usage: python -m anyio_fastapi_testkit doctor ")


def test_a_failing_lifespan_is_named_on_each_backend(
    project: Project, private_tmpdir: Path
) -> None:
    project.module("boom_app", FAILING_LIFESPAN_APP)
    project.ini(testkit_app="boom_app:app", testkit_backends="asyncio trio")
    result = doctor(project, in_process=True)
    for backend in ("asyncio", "trio"):
        result.stdout.fnmatch_lines(
            [
                f"PROBLEM  lifespan on {backend}: The lifespan startup of the app (FastAPI 'boom') "
                "raised RuntimeError: the cache server is not reachable. No test can run until "
                "startup works. (raised at */boom_app.py:8, in lifespan)"
            ]
        )
    result.stdout.fnmatch_lines(["testkit doctor: * 2 PROBLEM*"])
    assert result.ret == 1


def test_a_missing_schema_module_and_unused_session_settings_are_each_named(
    project: Project, shared_tmpdir: Path
) -> None:
    # Three independent problems in one project: each is named, and the server is stopped.
    project.module("items_app", ITEMS_APP)
    project.ini(
        **{
            **ITEMS_SETTINGS,
            "testkit_schema": "missing_models:Base.metadata",
            "testkit_session_dependency": "items_app:unused_dependency",
            "testkit_sessionmaker": "items_app:get_session",
        }
    )
    result = doctor(project)
    result.stdout.fnmatch_lines(
        [
            "OK       database server: embedded PostgreSQL *",
            "PROBLEM  schema: testkit_schema = 'missing_models:Base.metadata': module "
            "'missing_models' cannot be imported *Check the spelling*",
            "SKIP     database driver: needs the test database",
            "OK       app: *",
            "PROBLEM  session dependency: testkit_session_dependency = "
            "'items_app:unused_dependency' is not a dependency of any route of the app, so "
            "overriding it would change nothing. Name the function your routes pass to "
            "Depends()*or unset the option.",
            "PROBLEM  sessionmaker: testkit_sessionmaker = 'items_app:get_session' is a "
            "function, not a SQLAlchemy async_sessionmaker. *",
            "testkit doctor: * 3 PROBLEM*",
        ]
    )
    assert result.ret == 1
    assert_nothing_left(shared_tmpdir)


def test_an_unreachable_database_url_is_named_without_its_password(
    project: Project, private_tmpdir: Path
) -> None:
    # And, independent of it, the app imported by a plugin loaded at start-up, before the kit
    # could set testkit_database_env (the import order's problem when the kit is loaded
    # early: see test_a_malformed_database_env_skips_what_needs_it for it loaded late).
    project.module("items_app", ITEMS_APP)
    project.module("app_plugin", "import items_app  # noqa: F401\n")
    project.ini(**ITEMS_SETTINGS, testkit_database_env="DATABASE_URL")
    result = doctor(project, "-p", "app_plugin", "--testkit-db-url", UNREACHABLE_URL)
    result.stdout.fnmatch_lines(
        [
            "PROBLEM  database server: Could not connect to PostgreSQL at "
            f"{UNREACHABLE_MASKED}: *Connection refused",
            "*Fix: start that server; or correct the URL * in --testkit-db-url, *",
            "SKIP     schema: needs the database server",
            "SKIP     database driver: needs the database server",
            "OK       app: *",
            "SKIP     app database: needs the test database",
            "SKIP     app driver: needs the test database",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "PROBLEM  import order: testkit_database_env is set, but the app's module(s) "
            "'items_app' were imported by a plugin loaded at start-up, before the kit could*"
        ]
    )
    # The server is the one problem of the database: what needs it is skipped, not failed.
    result.stdout.fnmatch_lines(["testkit doctor: * 2 PROBLEM, *"])
    assert UNREACHABLE_PASSWORD not in output_of(result)
    assert result.ret == 1
    assert_nothing_left(private_tmpdir)


def test_trio_asked_but_not_importable_and_pytest_asyncio_in_auto_mode_are_named(
    project: Project, private_tmpdir: Path
) -> None:
    # Two independent problems of the plugins and backends in one project: each is named.
    # A module of the project shadows the installed trio, as if it were not installed.
    project.module("trio", "raise ImportError(\"No module named 'trio' (hidden by the test)\")")
    project.ini(testkit_app="simple_app:app", asyncio_mode="auto")
    result = doctor(project, "--testkit-backends", "asyncio,trio", fresh=True)
    result.stdout.fnmatch_lines(
        [
            "OK       backend asyncio: *",
            "PROBLEM  backend trio: --testkit-backends asks for the trio backend, but trio cannot "
            "be imported (No module named 'trio' (hidden by the test)). Install it with "
            "`pip install 'anyio-fastapi-testkit[trio]'`, or remove trio from --testkit-backends.",
            "PROBLEM  plugin pytest-asyncio: pytest-asyncio is active in auto mode (asyncio_mode "
            "= auto) beside anyio-fastapi-testkit*Fix one of: remove asyncio_mode = auto*"
            "`-p no:asyncio`*",
            "OK       app: *",
            "OK       lifespan on asyncio: *",
            "testkit doctor: * 2 PROBLEM*",
        ]
    )
    result.stdout.no_fnmatch_line("*lifespan on trio*")
    assert result.ret == 1


# pytest-trio is not installed here (autoloaded, it would change every other suite): a
# conftest registers what the check looks at, as pytest-trio does: a plugin named "trio" and
# its trio_mode ini option.
PYTEST_TRIO_STAND_IN = """
import types


def pytest_addoption(parser, pluginmanager):
    parser.addini("trio_mode", "stand-in for pytest-trio's option", type="bool", default=False)
    pluginmanager.register(types.ModuleType("pytest_trio_stand_in"), "trio")
"""


def test_pytest_trio_in_trio_mode_is_a_problem(project: Project, private_tmpdir: Path) -> None:
    # Without trio mode it is fine: test_an_app_without_database_settings_skips_the_database.
    project.pytester.makeconftest(PYTEST_TRIO_STAND_IN)
    project.ini(testkit_app="simple_app:app", trio_mode="true")
    result = doctor(project, in_process=True)
    result.stdout.fnmatch_lines(
        [
            "PROBLEM  plugin pytest-trio: pytest-trio is in trio mode (trio_mode = true)*Fix one "
            "of: remove trio_mode*`-p no:trio`*"
        ]
    )
    assert result.ret == 1


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("example", ["bookshelf", "taskboard"])
def test_no_false_alarm_on_the_example_projects(
    subsession_share: SubsessionShare, shared_tmpdir: Path, example: str
) -> None:
    # Real projects as their users run them: create_all and Alembic, psycopg and asyncpg,
    # testkit_database_env read by pydantic settings, a sessionmaker; both backends. On the
    # cached cluster their test runs (test_examples.py) share, with pytest's cache outside
    # the example's folder.
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-o",
        f"cache_dir={subsession_share.cache_dir}",
        "--testkit-doctor",
    ]
    completed = subprocess.run(
        [*command, "--testkit-backends", "asyncio trio"],
        cwd=EXAMPLES / example,
        capture_output=True,
        text=True,
        timeout=SUBSESSION_TIMEOUT,
        check=False,
        env={**os.environ, "TMPDIR": str(shared_tmpdir)},
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "PROBLEM " not in output, output
    assert "OK       lifespan on trio: " in output, output
    assert re.search(r"testkit doctor: \d+ OK, 0 PROBLEM", output), output
    assert_nothing_left(shared_tmpdir)


def test_a_password_on_the_command_line_is_warned_about(
    project: Project, pg_server: RunningServer, private_tmpdir: Path
) -> None:
    url = pg_server.info.admin_url.render_as_string(hide_password=False)
    result = doctor(project, f"--testkit-db-url={url}")
    result.stdout.fnmatch_lines(
        ["WARN     database URL: --testkit-db-url carries a password*TESTKIT_DATABASE_URL*"]
    )
    assert str(pg_server.info.admin_url.password) not in result.stdout.str()
    assert result.ret == 0  # a warning, not a problem


# --- what breaks real ports: the app's engines, testkit_database_env, factories, Alembic --------

# As real apps: engines built at import from the settings in the environment. `engine` reads
# what testkit_database_env sets; `reports_engine` a variable the kit does not set.
ENGINES_APP = """
import os

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(
    os.environ.get("DATABASE_URL", "postgresql+psycopg://shell@127.0.0.1:1/shelldb")
)


class Container:
    def __init__(self):
        self.reports_engine = create_async_engine(
            os.environ.get("REPORTS_URL", "postgresql+asyncpg://reporter@127.0.0.1:1/reports")
        )


container = Container()
app = FastAPI(title="engines")
"""

ITEM_FACTORIES = """
from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory

from items_app import Item


class ItemFactory(SQLAlchemyFactory[Item]):
    __set_primary_key__ = False
"""


def test_the_apps_engines_are_checked_as_a_test_run_imports_them(
    project: Project, shared_tmpdir: Path
) -> None:
    project.module("items_app", ITEMS_APP)
    project.module("engines_app", ENGINES_APP)
    project.module("item_factories", ITEM_FACTORIES)
    # Imported at module level, as most conftest.py files do: in the doctor's own process it
    # was imported before the doctor could set testkit_database_env (a test run sets it first),
    # and the import order is fine: the kit set the variables before the conftest.py ran.
    project.pytester.makeconftest("import engines_app  # noqa: F401\n")
    project.ini(
        testkit_app="engines_app:app",
        testkit_schema="items_app:Base.metadata",
        testkit_database_env=(
            "DATABASE_URL=postgresql+asyncpg://{user}:{password}@{host}:{port}/{database} "
            "APP_ENV=test SECRET_KEY=s3cr3t-key b"
        ),
        testkit_factories="item_factories",
    )
    result = doctor(project)
    result.stdout.fnmatch_lines(
        [
            "WARN     database env: sets DATABASE_URL=postgresql+asyncpg://{user}:{password}@"
            "{host}:{port}/{database}, APP_ENV=test, SECRET_KEY=***, b (the test database's "
            "URL); but: the bare name(s) 'b' get the whole database URL, password included*",
            "OK       database server: *",
            "OK       import order: testkit_database_env is set before any conftest.py or test "
            "module is imported",
            "PROBLEM  app database: imported as in a test run, the app's engine(s) do not name "
            "the test database test_app (port *): engines_app:container.reports_engine points "
            "at postgresql+asyncpg://reporter@127.0.0.1:1/reports. testkit_database_env (setting "
            "DATABASE_URL, APP_ENV, SECRET_KEY, b) "
            "does not set the variable(s) the app's settings read the database from*",
            "WARN     app driver: the app uses asyncpg (testkit_database_env DATABASE_URL, "
            "engines_app:engine, engines_app:container.reports_engine), but the kit's sessions"
            "*use psycopg (testkit_database_driver = 'psycopg')*Fix: set "
            "testkit_database_driver = asyncpg.",
            "OK       factories: testkit_factories = 'item_factories': 1 factory bound to the "
            "test's session during each test (and put back after): ItemFactory (polyfactory)",
            "testkit doctor: * 1 PROBLEM, * 2 WARN; fix the problems above. No test was run.",
        ]
    )
    output = result.stdout.str() + result.stderr.str()
    assert "s3cr3t-key" not in output
    assert "shelldb" not in output  # engines_app:engine got the test database's URL
    assert result.ret == 1
    assert_nothing_left(shared_tmpdir)


def test_a_malformed_database_env_skips_what_needs_it(
    project: Project, private_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # And, independent of it, the kit loaded late (pytest_plugins in a conftest.py that
    # imports the app first): the import order's problem when the kit is loaded late.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    project.pytester.makeconftest(
        "import items_app  # noqa: F401\npytest_plugins = ['anyio_fastapi_testkit.plugin']\n"
    )
    project.module("items_app", ITEMS_APP)
    project.ini(
        **ITEMS_SETTINGS,
        testkit_database_env="APP_ENV=test DATABASE_URL={nope}",
        testkit_factories="items_app",
    )
    result = doctor(project)
    result.stdout.fnmatch_lines(
        [
            "PROBLEM  database env: testkit_database_env entry 'DATABASE_URL={nope}' uses an "
            "unknown placeholder*",
            "SKIP     database server: needs testkit_database_env",
            "SKIP     schema: needs testkit_database_env",
            "SKIP     database driver: needs testkit_database_env",
            "PROBLEM  import order: testkit_database_env is set, but the app's module(s) "
            "'items_app' were imported by a conftest.py (the kit was loaded late), before the "
            "kit could*",
            "OK       app: *",
            "SKIP     app database: needs the test database",
            "SKIP     app driver: needs the test database",
            "PROBLEM  factories: testkit_factories = 'items_app': module 'items_app' defines no "
            "SQLAlchemy factory*",
            "testkit doctor: * 3 PROBLEM, *",
        ]
    )
    result.stdout.no_fnmatch_line("PROBLEM  database server*")
    assert result.ret == 1
    assert_nothing_left(private_tmpdir)


REVISION = """
import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down!r}


def upgrade():
    op.create_table({table!r}, sa.Column("id", sa.Integer(), primary_key=True))
"""


def test_the_cached_cluster_is_used_and_the_alembic_version_shown(
    project: Project, private_tmpdir: Path
) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(**{**ITEMS_SETTINGS, "testkit_schema": "alembic:alembic.ini"})
    revisions = (("0001", None, "items"), ("0002", "0001", "tags"))
    write_alembic(
        project.pytester.path,
        {
            f"{revision}.py": REVISION.format(revision=revision, down=down, table=table)
            for revision, down, table in revisions
        },
    )
    project.module("test_would_run", WOULD_RUN)
    runs = []
    for _ in range(2):  # with pytest's cache provider, as a test run has it
        result = project.pytester.runpytest_subprocess(
            "-p", "no:randomly", "--testkit-doctor", timeout=SUBSESSION_TIMEOUT
        )
        result.stdout.fnmatch_lines(
            [
                "OK       schema: *(3 tables: public.alembic_version, public.items, public.tags)",
                "OK       alembic version: the template's alembic_version holds 0002: the head "
                "of alembic.ini's script folder*",
                "testkit doctor: *, 0 PROBLEM, *",
            ]
        )
        assert not (project.pytester.path / "a-test-ran").exists()
        assert_nothing_left(private_tmpdir)  # the cached server is stopped, its data kept
        runs.append(result)
    runs[0].stdout.fnmatch_lines(
        [
            "OK       database server: *; the project's cached cluster, as a test run uses (made "
            "now by initdb and kept for the next runs; template built and kept)"
        ]
    )
    runs[1].stdout.fnmatch_lines(
        [
            "OK       database server: *; the project's cached cluster, as a test run uses "
            "(reused; template reused)"
        ]
    )
