"""Ctrl-C and SIGTERM (CI's cancel) mid-test are ordinary stops: the test is cancelled,
pytest prints its interrupted summary naming the test's line, the app's lifespan ends and
the kit cleans up, with no crash traceback and nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ITEMS_APP, SUBSESSION_TIMEOUT, Project, assert_nothing_left, plugin_options

# The app writes its lifespan's end to a file, so the test can see that shutdown ran.
APP = (
    ITEMS_APP
    + """
from contextlib import asynccontextmanager
from pathlib import Path


@asynccontextmanager
async def lifespan(app):
    yield
    Path("lifespan-ended").write_text("yes")


app.router.lifespan_context = lifespan
"""
)

TESTS = """
import os
import signal
from pathlib import Path

import anyio


async def test_01(client, db_session):
    assert (await client.get("/items")).json() == []


async def test_02_interrupted(client, db_session):
    Path("test-started").write_text("yes")
    {send}
    await anyio.sleep(60)


async def test_03(client):
    pass
"""


@pytest.fixture(autouse=True)
def _no_configured_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESTKIT_DATABASE_URL", raising=False)


def _project(project: Project, send: str) -> None:
    project.module("items_app", APP)
    project.ini(
        testkit_app="items_app:app",
        testkit_schema="items_app:Base.metadata",
        testkit_session_dependency="items_app:get_session",
    )
    project.module("test_stop", TESTS.format(send=send))


def _env_project(project: Project, conftest: str) -> None:
    """The project with ``testkit_database_env``: the kit makes the database before pytest
    imports ``conftest``."""
    _project(project, "")
    project.ini(
        testkit_app="items_app:app",
        testkit_schema="items_app:Base.metadata",
        testkit_session_dependency="items_app:get_session",
        testkit_database_env="DATABASE_URL",
    )
    project.module("conftest", conftest)


def _check_ordinary_stop(output: str, code: int, folder: Path, signal_name: str) -> None:
    assert code == pytest.ExitCode.INTERRUPTED, output
    assert f"KeyboardInterrupt: {signal_name}" in output
    # pytest names the line the test waited on; the kit, where its tasks were waiting.
    assert re.search(r"test_stop.py:\d+: KeyboardInterrupt", output), output
    assert "await anyio.sleep(60)" in output
    assert "test_stop.py::test_02_interrupted was interrupted" in output
    assert "Traceback" not in output and "INTERNALERROR" not in output
    assert "lifespan" not in output.lower().replace("lifespan-ended", "")
    assert (folder / "lifespan-ended").exists()


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_from_the_test_itself_stops_the_run_cleanly(
    project: Project, private_tmpdir: Path, signal_name: str
) -> None:
    _project(project, f"os.kill(os.getpid(), signal.{signal_name})")
    result = project.run("-q")
    output = "\n".join(result.outlines + result.errlines)
    _check_ordinary_stop(output, result.ret, project.pytester.path, signal_name)
    assert "1 passed" in output
    assert_nothing_left(private_tmpdir)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_from_outside_stops_the_run_cleanly(
    project: Project, private_tmpdir: Path, signal_name: str
) -> None:
    # As a terminal's Ctrl-C or a CI runner's cancel: the signal comes while the loop waits.
    _project(project, "")
    folder = project.pytester.path
    options, after = plugin_options(["-p", "no:cacheprovider"])
    args = [sys.executable, "-m", "pytest", "-q", *options, "-p", "no:cacheprovider", *after]
    with subprocess.Popen(
        args, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        deadline = time.monotonic() + SUBSESSION_TIMEOUT
        while not (folder / "test-started").exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)  # into the test's wait
        os.kill(process.pid, getattr(signal, signal_name))
        output, _ = process.communicate(timeout=SUBSESSION_TIMEOUT)
    _check_ordinary_stop(output, process.returncode, folder, signal_name)
    assert_nothing_left(private_tmpdir)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_conftest_files_are_imported_stops_the_run_cleanly(
    project: Project, private_tmpdir: Path, signal_name: str
) -> None:
    # With testkit_database_env the kit makes the database before pytest imports the
    # conftest files (often the app, and slow): pytest has no session yet to end then.
    _env_project(
        project,
        f"""
        import os
        import signal
        from pathlib import Path

        Path("database-url").write_text(os.environ["DATABASE_URL"])
        os.kill(os.getpid(), signal.{signal_name})
        """,
    )
    result = project.run("-q")
    output = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.INTERRUPTED, output
    assert "anyio-fastapi-testkit: interrupted" in output
    assert "the kit stopped and dropped what it had made" in output
    assert "Traceback" not in output and "INTERNALERROR" not in output
    assert (project.pytester.path / "database-url").exists()
    assert not (project.pytester.path / "test-started").exists()
    assert_nothing_left(private_tmpdir)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_after_the_conftest_files_before_the_session_stops_the_run_cleanly(
    project: Project, private_tmpdir: Path, signal_name: str
) -> None:
    # Between the import of the conftest files and pytest's session (its command line's
    # main step, before it configures the run) a KeyboardInterrupt would escape pytest with no
    # summary: the kit notes the signal and ends the run as interrupted once it is configured.
    _env_project(
        project,
        f"""
        import os
        import signal

        import pytest


        @pytest.hookimpl(tryfirst=True)
        def pytest_cmdline_main(config):
            os.kill(os.getpid(), signal.{signal_name})
        """,
    )
    result = project.run("-q")
    output = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.INTERRUPTED, output
    assert f"KeyboardInterrupt: {signal_name}" in output
    assert "Traceback" not in output and "INTERNALERROR" not in output
    assert not (project.pytester.path / "test-started").exists()
    assert_nothing_left(private_tmpdir)
