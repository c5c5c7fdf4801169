"""Database settings that cannot work: each sub-session must say what is wrong and how to fix
it, never show a password, and leave no server, state folder or database behind."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    ITEMS_APP,
    Project,
    assert_nothing_left,
    database_names,
    drop_by_hand,
    sql_rows,
)
from scaffolding import (
    UNREACHABLE_MASKED,
    UNREACHABLE_PASSWORD,
    UNREACHABLE_URL,
    output_of,
    shared_tmpdir_fixture,  # noqa: F401 (the shared_tmpdir fixture)
    write_alembic,
)
from sqlalchemy.engine import URL

from anyio_fastapi_testkit._postgres.server import RunningServer

URL_SETTINGS = ("--testkit-db-url", "TESTKIT_DATABASE_URL", "testkit_database_url")

# A test through database_url alone, one through the async fixtures: the first to need the
# server stops the session (test_setup_errors.py has the async fixtures first).
DB_TESTS = """
def test_url(database_url):
    pass

async def test_session(db_session):
    pass
"""

# One test, where each failed attempt starts a server (a later test would start another).
DB_TEST = """
async def test_session(db_session):
    pass
"""


pytestmark = pytest.mark.usefixtures("no_configured_server")


def items_project(project: Project, **settings: str) -> None:
    project.module("items_app", ITEMS_APP)
    project.ini(**{"testkit_app": "items_app:app", **settings})


# --- the server ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env", "ini", "flag-with-database-env"])
def test_an_unreachable_server_is_reported_masked_with_the_settings(
    project: Project, private_tmpdir: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    settings = {"testkit_database_url": UNREACHABLE_URL} if how == "ini" else {}
    if how == "flag-with-database-env":
        settings["testkit_database_env"] = "DATABASE_URL"  # provisioned at configure time
    project.ini(**settings)
    project.module("test_db", DB_TESTS)
    args = [f"--testkit-db-url={UNREACHABLE_URL}"] if how.startswith("flag") else []
    if how == "env":
        monkeypatch.setenv("TESTKIT_DATABASE_URL", UNREACHABLE_URL)
    result = project.run(*args)
    output = output_of(result)
    assert f"Could not connect to PostgreSQL at {UNREACHABLE_MASKED}" in output
    assert "Connection refused" in output  # the driver's own words
    assert all(setting in output for setting in URL_SETTINGS), output
    assert UNREACHABLE_PASSWORD not in output
    if how == "flag-with-database-env":
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert "testkit_database_env is set" in output and "Could not connect" in output
    else:
        result.assert_outcomes(errors=1)  # the session stops there
    assert_nothing_left(private_tmpdir)


@pytest.mark.parametrize(
    ("configured", "tb"),
    [
        pytest.param(
            UNREACHABLE_URL.replace(":1/", ":notaport/"), "--tb=auto", id="unparseable-auto"
        ),
        pytest.param(
            UNREACHABLE_URL.replace(":1/", ":notaport/"), "--tb=long", id="unparseable-long"
        ),
        # The unreachable URL with the default --tb=auto is the sub-session of
        # test_an_unreachable_server_is_reported_masked_with_the_settings[flag], which checks
        # the same outcome and the password's absence.
        pytest.param(UNREACHABLE_URL, "--tb=long", id="unreachable-long"),
    ],
)
def test_no_traceback_shows_the_configured_password(
    project: Project, private_tmpdir: Path, configured: str, tb: str
) -> None:
    # Known leak: pytest prints the arguments of the frames it shows in full, and the kit's
    # functions take the configured URL as a plain str (start_server, _parse_configured).
    project.ini()
    project.module("test_db", DB_TESTS)
    result = project.run(tb, f"--testkit-db-url={configured}")
    result.assert_outcomes(errors=1)  # the session stops there
    assert UNREACHABLE_PASSWORD not in output_of(result)


def test_a_wrong_password_is_reported_masked(project: Project, pg_server: RunningServer) -> None:
    right = pg_server.info.admin_url
    wrong = right.set(password="WrongPassw0rd", database="appdb")
    project.ini()
    project.module("test_db", DB_TESTS)
    result = project.run(f"--testkit-db-url={wrong.render_as_string(hide_password=False)}")
    result.assert_outcomes(errors=1)  # the session stops there
    output = output_of(result)
    masked = f"postgresql://postgres:***@127.0.0.1:{right.port}/appdb"
    assert f"Could not connect to PostgreSQL at {masked}" in output
    assert "password authentication failed for user" in output
    assert "correct the URL (user, password, host, port, database)" in output
    assert "WrongPassw0rd" not in output
    assert str(right.password) not in output


# --- the schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        pytest.param(
            "nowhere_models:Base.metadata",
            "*testkit_schema = 'nowhere_models:Base.metadata': module 'nowhere_models' cannot be "
            "imported*",
            id="no-such-module",
        ),
        pytest.param(
            "items_app:app",
            "*testkit_schema = 'items_app:app' is a FastAPI, not a SQLAlchemy MetaData*"
            "alembic:alembic.ini*",
            id="not-metadata",
        ),
        pytest.param(
            "items_app",
            "*testkit_schema = 'items_app' must name the models' MetaData as*",
            id="no-attribute-part",
        ),
    ],
)
def test_a_wrong_schema_setting_names_the_setting_and_leaves_nothing(
    project: Project, shared_tmpdir: Path, schema: str, expected: str
) -> None:
    items_project(project, testkit_schema=schema)
    project.module("test_db", DB_TEST)
    result = project.run()
    result.stdout.fnmatch_lines([expected])
    result.assert_outcomes(errors=1)
    assert_nothing_left(shared_tmpdir)


FAILING_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.create_table("half_done", sa.Column("id", sa.Integer(), primary_key=True))
    raise RuntimeError("boom in revision 0001")
"""


def test_a_missing_alembic_config_is_named(project: Project, shared_tmpdir: Path) -> None:
    items_project(project, testkit_schema="alembic:migrations/alembic.ini")
    project.module("test_db", DB_TEST)
    result = project.run()
    config = project.pytester.path / "migrations" / "alembic.ini"
    result.stdout.fnmatch_lines(
        [f"*testkit_schema names the Alembic config '{config}', which does not exist*"]
    )
    result.assert_outcomes(errors=1)
    assert_nothing_left(shared_tmpdir)


def test_a_failing_migration_shows_alembics_error_and_leaves_nothing(
    project: Project, shared_tmpdir: Path
) -> None:
    items_project(project, testkit_schema="alembic:alembic.ini")
    write_alembic(project.pytester.path, {"0001_failing.py": FAILING_REVISION})
    project.module("test_db", DB_TEST)
    result = project.run()
    result.stdout.fnmatch_lines(
        [
            "*`alembic upgrade head` with *alembic.ini on postgresql://postgres:***@*"
            "/test_app_template failed; Alembic said:*",
            "*RuntimeError: boom in revision 0001*",
        ]
    )
    result.assert_outcomes(errors=1)
    assert_nothing_left(shared_tmpdir)


@pytest.fixture
def appdb(pg_server: RunningServer) -> Iterator[URL]:
    admin = pg_server.info.admin_url
    drop_by_hand(admin, "appdb")
    sql_rows(admin, "CREATE DATABASE appdb")
    yield admin.set(database="appdb")
    for name in database_names(admin):
        if name.startswith(("appdb", "test_appdb")):
            drop_by_hand(admin, name)


@pytest.mark.parametrize("database_env", ["", "DATABASE_URL"])
def test_a_failing_migration_on_a_configured_server_drops_the_template(
    project: Project, appdb: URL, database_env: str
) -> None:
    # With testkit_database_env the schema is built at configure time: a usage error.
    items_project(project, testkit_schema="alembic:alembic.ini", testkit_database_env=database_env)
    write_alembic(project.pytester.path, {"0001_failing.py": FAILING_REVISION})
    project.module("test_db", DB_TEST)
    result = project.run(f"--testkit-db-url={appdb.render_as_string(hide_password=False)}")
    output = output_of(result)
    assert "RuntimeError: boom in revision 0001" in output
    # The template's name carries the run's token (other runs may share the server).
    assert re.search(r"/test_appdb_[0-9a-f]{8}_template failed; Alembic said:", output), output
    assert str(appdb.password) not in output
    assert result.ret in (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.USAGE_ERROR)
    assert [name for name in database_names(appdb) if name.startswith("test_")] == []


# --- the session dependency, the environment, database_url in assertion reports --------


COMPARE_TEST = """
from pathlib import Path
from sqlalchemy.engine import make_url

def test_compare(database_url):
    Path("password.txt").write_text(make_url(str(database_url)).password)
    assert database_url == "postgresql://elsewhere/db"
"""


@pytest.mark.parametrize(
    ("dependency", "expected"),
    [
        pytest.param(
            "items_app:unused_dependency",
            "*testkit_session_dependency = 'items_app:unused_dependency' is not a dependency of "
            "any route of the app*",
            id="not-used-by-the-app",
        ),
        pytest.param(
            "items_app:no_such_function",
            "*testkit_session_dependency = 'items_app:no_such_function': 'items_app' has no "
            "attribute*",
            id="no-such-attribute",
        ),
    ],
)
def test_a_session_dependency_the_app_does_not_use_is_named(
    project: Project, dependency: str, expected: str
) -> None:
    items_project(
        project, testkit_schema="items_app:Base.metadata", testkit_session_dependency=dependency
    )
    project.module(
        "test_client",
        """
        async def test_request(client):
            await client.get("/health")
        """,
    )
    # The same sub-session checks that a failed comparison with database_url hides the
    # password: in a module that runs first, as the wrong dependency stops the session.
    project.module("test_a_compare", COMPARE_TEST)
    result = project.run("-v")
    result.stdout.fnmatch_lines([expected])
    result.stdout.fnmatch_lines_random(
        ["*test_client.py::test_request ERROR*", "*test_a_compare.py::test_compare FAILED*"]
    )
    result.assert_outcomes(errors=1, failed=1)
    password = (project.pytester.path / "password.txt").read_text()
    assert password
    assert password not in output_of(result)


def test_an_unknown_placeholder_in_database_env_is_a_usage_error(
    project: Project, private_tmpdir: Path
) -> None:
    project.ini(testkit_database_env="DB_HOST={hostname}")
    project.module("test_db", DB_TESTS)
    result = project.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*testkit_database_env entry 'DB_HOST={hostname}' uses an unknown placeholder*"]
    )
    assert_nothing_left(private_tmpdir)
