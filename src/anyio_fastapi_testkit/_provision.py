"""This pytest process's test database: server, template, working clone, environment, cleanup."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from ._config import Settings
from ._databases import create_database, database_url, drop_database, test_database_names
from ._errors import ConfigError, TestkitError
from ._leaks import LeakDetector
from ._schema import build_schema
from ._server import RunningServer, start_server
from ._urls import SecretURL

DEFAULT_BASE_NAME = "app"  # test_app, test_app_template for the kit's own server


class LeakWarning(UserWarning):
    """Rows were committed outside the test's transaction (testkit_leak_check = warn)."""


DatabaseURL = SecretURL


def render_env(entries: tuple[str, ...], url: URL, driver_url: URL) -> dict[str, str]:
    """The variables of ``testkit_database_env`` for the database at ``url``.

    ``NAME`` gets the whole URL (with the configured driver); ``NAME=template`` gets the
    template with {url} {host} {port} {user} {password} {database} filled in.
    """
    parts = {
        "url": driver_url.render_as_string(hide_password=False),
        "host": url.host or str(url.query.get("host", "")),
        "port": str(url.port or 5432),
        "user": url.username or "",
        "password": url.password or "",
        "database": url.database or "",
    }
    values: dict[str, str] = {}
    for entry in entries:
        name, sep, template = entry.partition("=")
        if not name.isidentifier():
            raise ConfigError(
                f"testkit_database_env entry {entry!r} must be NAME or NAME=template "
                "(e.g. DATABASE_URL, or DB_HOST={host})."
            )
        try:
            values[name] = template.format(**parts) if sep else parts["url"]
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"testkit_database_env entry {entry!r} uses an unknown placeholder ({exc}); "
                "known ones: {url} {host} {port} {user} {password} {database}."
            ) from None
    return values


class TestDatabases:
    """The server and the databases the kit created for this process; built on first use.

    Thread-safe: the first async test builds it from a worker thread, so that the event loop
    is never blocked by initdb or by migrations.
    """

    __test__ = False

    def __init__(self, settings: Settings, *, rootdir: Path, worker_id: str | None) -> None:
        self.settings = settings
        self.rootdir = rootdir
        self.worker_id = worker_id
        self._lock = threading.RLock()
        self._server: RunningServer | None = None
        self._created: list[str] = []
        self._url: DatabaseURL | None = None
        self._saved_env: dict[str, str | None] = {}
        self.description = "not started"
        self.leaks: LeakDetector | None = None
        self._failure: TestkitError | None = None

    @property
    def ready(self) -> bool:
        return self._url is not None

    def working_url(self) -> DatabaseURL:
        """The URL (with the configured driver) of this worker's test database."""
        with self._lock:
            if self._failure is not None:
                # Every test asking again would start a server again: report the first error.
                raise self._failure
            if self._url is None:
                try:
                    self._url = self._build()
                except TestkitError as exc:
                    self._failure = exc
                    raise
            return self._url

    def apply_env(self) -> None:
        """Set ``testkit_database_env`` variables for the working database (before app import)."""
        if self.settings.database_env:
            self.working_url()  # sets them before it imports the schema source

    def _set_env(self, url: URL) -> None:
        for name, value in self._env_for(url).items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def take_leak_baseline(self) -> None:
        if self.leaks is not None and self.ready:
            self.leaks.take_baseline()

    def check_leaks(self) -> None:
        """Fail (or warn, per testkit_leak_check) if rows were committed outside the test."""
        if self.leaks is None or not self.ready:
            return
        report = self.leaks.check()
        if not report:
            return
        message = self.leaks.describe(report)
        if self.settings.leak_check == "warn":
            warnings.warn(message, LeakWarning, stacklevel=2)
        else:
            pytest.fail(message, pytrace=False)

    def close(self) -> None:
        """Drop the databases the kit created, stop its server, restore the environment."""
        with self._lock:
            try:
                if self.leaks is not None:
                    self.leaks.close()
                    self.leaks = None
                if self._server is not None:
                    admin = self._server.info.admin_url
                    for name in reversed(self._created):
                        drop_database(admin, name)
                    self._created.clear()
            finally:
                if self._server is not None:
                    self._server.stop()
                    self._server = None
                self._url = None
                for name, value in self._saved_env.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
                self._saved_env.clear()

    def _env_for(self, url: URL) -> Mapping[str, str]:
        driver_url = url.set(drivername=f"postgresql+{self.settings.database_driver}")
        return render_env(self.settings.database_env, url, driver_url)

    def _build(self) -> DatabaseURL:
        self._server = start_server(self.settings.database_url, tcp=self.settings.server_tcp)
        self.description = self._server.info.description  # also after a failed schema build
        try:
            admin = self._server.info.admin_url
            base = (
                admin.database
                if self._server.info.source == "url" and admin.database
                else DEFAULT_BASE_NAME
            )
            template, working = test_database_names(base, self.worker_id)
            if self.worker_id:
                # Until one server serves all xdist workers, each worker builds its own template.
                template = f"{working}{template[len(f'test_{base}') :]}"
            # Before the schema source is imported: models modules often import the app's
            # settings, which read these variables once.
            self._set_env(database_url(admin, working, None))
            create_database(admin, template)
            self._created.append(template)
            template_url = database_url(admin, template, None)
            build_schema(
                self.settings.schema,
                template_url,
                rootdir=self.rootdir,
                env=self._env_for(template_url),
            )
            create_database(admin, working, template=template)
            self._created.append(working)
            self.description = f"{self._server.info.description}, database {working}"
            driver = self.settings.database_driver
            url = database_url(admin, working, "asyncpg" if driver == "asyncpg" else "psycopg")
            rendered = url.render_as_string(hide_password=False)
            if self.settings.leak_check != "off":
                self.leaks = LeakDetector(rendered)
            return DatabaseURL(rendered)
        except BaseException:
            self.close()
            raise
