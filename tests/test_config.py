"""Settings and conflicts that must stop the run with an error naming the fix."""

from __future__ import annotations

import pytest
from conftest import Project


def test_unknown_backend_in_ini(project: Project) -> None:
    project.ini(testkit_backends="asyncio curio")
    project.module("test_any", "async def test_one():\n    pass\n")
    result = project.run()
    result.stderr.fnmatch_lines(
        ["*testkit_backends names an unknown backend 'curio'; known backends are asyncio, trio*"]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_unknown_backend_on_command_line(project: Project) -> None:
    project.ini()
    project.module("test_any", "async def test_one():\n    pass\n")
    result = project.run("--testkit-backends=uvloop")
    result.stderr.fnmatch_lines(["*--testkit-backends names an unknown backend 'uvloop'*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_trio_requested_but_not_installed(project: Project) -> None:
    project.ini(testkit_backends="asyncio trio")
    # A local package shadows the installed trio and fails to import, as a missing one does.
    project.pytester.mkpydir("trio")
    project.module("trio/__init__", "raise ImportError('No module named trio')\n")
    project.module("test_any", "async def test_one():\n    pass\n")
    result = project.run()
    result.stderr.fnmatch_lines(
        ["*trio is not installed; install it with `pip install 'anyio-fastapi-testkit[[]trio[]]'`*"]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR


@pytest.mark.parametrize("how", ["ini", "flag"])
def test_pytest_asyncio_auto_mode_is_refused(project: Project, how: str) -> None:
    if how == "ini":
        project.ini(asyncio_mode="auto")
        args: tuple[str, ...] = ()
    else:
        project.ini()
        args = ("--asyncio-mode=auto",)
    project.module("test_any", "async def test_one():\n    pass\n")
    result = project.run(*args)
    result.stderr.fnmatch_lines(
        ["*pytest-asyncio is active in auto mode*-p no:asyncio*uninstall pytest-asyncio*"]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_unknown_database_driver(project: Project) -> None:
    project.ini(testkit_database_driver="pg8000")
    project.module("test_any", "def test_one():\n    pass\n")
    result = project.run()
    result.stderr.fnmatch_lines(["*testkit_database_driver = 'pg8000' is not a supported driver*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_settings_are_listed_with_help(project: Project) -> None:
    project.ini()
    result = project.run("--help")
    result.stdout.fnmatch_lines(
        [
            "*--testkit-backends=NAMES*",
            "*--testkit-db-url=URL*",
            "*testkit_app (string)*ASGI app under test*",
            "*testkit_backends (args)*",
        ]
    )


def test_fixtures_have_reference_docs(project: Project) -> None:
    project.ini()
    result = project.run("--fixtures")
    for fixture, scope, doc in [
        ("anyio_backend", " [[]session scope[]]", "The backend the current test runs on*"),
        ("app", " [[]session scope[]]", "The app under test*"),
        ("app_lifespan", " [[]session scope[]]", "The app after its lifespan startup*"),
        ("client", "", "An ``httpx.AsyncClient``*"),
        ("dependency_overrides", "", "The app's ``dependency_overrides`` dict*"),
    ]:
        result.stdout.fnmatch_lines(
            [f"{fixture}{scope} -- *anyio_fastapi_testkit*.py:*", f"    {doc}"]
        )
        # Once: the plugin registers one copy of each (the conftest copies are made on access).
        listed = [
            line
            for line in result.outlines
            if line.startswith(f"{fixture} ") and "anyio_fastapi_testkit" in line
        ]
        assert len(listed) == 1, listed


# --- list settings as users write them (in-process: only the settings are read) -------------

ENV_ENTRIES = ("DATABASE_URL", "GREETING=a b", 'CORS_ORIGINS=["http://a"]', "APP_ENV=test")


def test_toml_list_entries_are_taken_whole(pytester: pytest.Pytester) -> None:
    from sqlalchemy.engine import make_url

    from anyio_fastapi_testkit._core.config import read_settings
    from anyio_fastapi_testkit._provisioning.run_databases import render_env

    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        testkit_database_env = [
            "DATABASE_URL", "GREETING=a b", 'CORS_ORIGINS=["http://a"]', "APP_ENV=test",
        ]
        testkit_factories = ["pkg.factories", "pkg.more:BookFactory"]
        """
    )
    settings = read_settings(pytester.parseconfig())
    assert settings.database_env == ENV_ENTRIES
    assert settings.factories == ("pkg.factories", "pkg.more:BookFactory")
    url = make_url("postgresql://u:pw@127.0.0.1:5433/test_app")
    assert render_env(settings.database_env, url, url) == {
        "DATABASE_URL": "postgresql://u:pw@127.0.0.1:5433/test_app",
        "GREETING": "a b",
        "CORS_ORIGINS": '["http://a"]',
        "APP_ENV": "test",
    }


INI_ENTRIES = """DATABASE_URL GREETING="a b"
    CORS_ORIGINS='["http://a"]'
    APP_ENV=test"""


@pytest.mark.parametrize("file", ["pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml"])
def test_string_entries_read_the_same_from_every_config_file(
    pytester: pytest.Pytester, file: str
) -> None:
    from anyio_fastapi_testkit._core.config import read_settings

    if file == "pyproject.toml":
        body = INI_ENTRIES.replace("\n    ", "\n")
        pytester.makepyprojecttoml(
            f"[tool.pytest.ini_options]\ntestkit_database_env = '''{body}'''\n"
        )
    else:
        section = "[pytest]" if file != "setup.cfg" else "[tool:pytest]"
        (pytester.path / file).write_text(f"{section}\ntestkit_database_env = {INI_ENTRIES}\n")
    settings = read_settings(pytester.parseconfig())
    assert settings.database_env == ENV_ENTRIES
