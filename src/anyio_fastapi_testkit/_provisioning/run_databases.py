"""This pytest process's test database: server, template, working clone, environment, cleanup."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from .._core.config import ALEMBIC_PREFIX, Settings, get_settings
from .._core.errors import ConfigError, DatabaseError, TestkitError
from .._core.urls import SecretURL, mask_url
from .._core.warnings import TestkitWarning
from .._postgres.cache import template_key
from .._postgres.server import RunningServer, server_answers_at, start_server
from .databases import (
    RUN_ID,
    TEMPLATE_SUFFIX,
    create_database,
    database_url,
    drop_database,
    test_database_names,
)
from .fingerprint import schema_fingerprint
from .foreign_guard import guard, target
from .kept_template import find_kept_template, keep_template
from .liveness import RunLock, run_token
from .owned import drop_databases_except, drop_dead_runs
from .progress import Progress
from .schema import build_schema
from .spares import SPARE_WAIT, SpareMaker, claim_spare, claimable_spares, spare_name
from .stash import DATABASES_KEY
from .template_check import TEMPLATE_RUN_ID, record_template
from .xdist import (
    ServerPlan,
    failure_record,
    recorded_server,
    recorded_template_key,
    server_plan,
    server_record,
    xdist_worker_id,
)

DEFAULT_BASE_NAME = "app"  # test_app, test_app_template for the kit's own server
# On a configured server, which other runs may share, names carry the run's token
# (test_appdb_1a2b3c4d, test_appdb_1a2b3c4d_template) and the run holds its lock (liveness).
# The kit's own cluster is the run's alone (a throwaway; or the cache, under its flock), and
# keeps fixed names: its cached template and spares are found by name by the next run.


class LeftoverWarning(TestkitWarning):
    """Databases that killed runs left on a shared server could not be dropped."""


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


def _leftovers_message(admin: URL, failed: Mapping[str, str]) -> str:
    drops = " ".join(
        f"DROP DATABASE {sql.Identifier(name).as_string()} WITH (FORCE);" for name in failed
    )
    return (
        f"Runs of anyio-fastapi-testkit that were killed left databases on {mask_url(admin)} "
        "(each carries the kit's mark, and no session holds the advisory lock its comment "
        "names, so no run uses them), and this run could not drop them; it goes on without "
        "them:\n  " + "\n  ".join(failed.values()) + f"\nFix: as their owner or a superuser, "
        f"run {drops} Or give the runs on this server one user, so that each can drop what "
        "the others left."
    )


@dataclass(frozen=True)
class _Kept:
    """The kept template of this run's schema on a configured server (``kept_template``)."""

    name: str
    key: str
    reusable: bool  # there, and this run may clone it


def _how_built(source: str | None) -> str:
    if source is None:
        return "empty"
    if source.startswith(ALEMBIC_PREFIX):
        return "alembic upgrade head"
    return f"create_all of {source}"


@dataclass(frozen=True)
class _Prepared:
    """The test database with every step made but the last: ``finish`` makes the working
    database (a copy of the template, most often) under ``working``, reached at ``url``."""

    url: DatabaseURL
    working: str
    finish: Callable[[], None]


class _Aside:
    """The last step of making the test database (the working database), run in a thread."""

    def __init__(self, prepared: _Prepared) -> None:
        self.working = prepared.working
        self._url = prepared.url
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(prepared.finish,), name="testkit-working-database"
        )
        self._thread.start()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self, step: Callable[[], None]) -> None:
        try:
            step()
        except BaseException as exc:  # handed to the thread that waits for it
            self._error = exc

    def join(self) -> None:
        self._thread.join()

    def wait(self, say: Callable[[str], None] | None) -> None:
        """Wait for the step, saying so on the terminal when that takes long."""
        if self.done:
            return
        with Progress(say) as progress:
            progress.step(f"copying the template database into {self.working}")
            self.join()

    def result(self) -> DatabaseURL:
        self.join()
        if self._error is not None:
            raise self._error.with_traceback(None)
        return self._url


class TestDatabases:
    """The server and the databases the kit created for this process; built on first use.

    Thread-safe: the first async test builds it from a worker thread, so that the event loop
    is never blocked by initdb or by migrations.
    """

    __test__ = False

    def __init__(
        self,
        settings: Settings,
        *,
        rootdir: Path,
        worker_id: str | None,
        plan: ServerPlan | None = None,
    ) -> None:
        self.settings = settings
        self.rootdir = rootdir
        self.worker_id = worker_id
        self.plan = plan or ServerPlan()
        self._lock = threading.RLock()
        self._server: RunningServer | None = None
        self._created: list[str] = []
        self._url: DatabaseURL | None = None
        self._saved_env: dict[str, str | None] = {}
        self.description = "not started"
        # Called first by close(), before the databases are dropped: what rooms above hold
        # open on them (the leak check's connection).
        self._closers: list[Callable[[], None]] = []
        self._failure: TestkitError | None = None
        # How the database came to be, for reports and tests: "cold", "warm", "shared", ...
        self.provenance: dict[str, object] = {}
        self._template_key: str | None = None  # of a cached template: its spares' key
        self._spares: frozenset[str] | None = None  # the cached template's, found by its check
        self._spare_maker: SpareMaker | None = None
        self._working_built = False  # built beside the template: no clone needed
        self._run_lock: RunLock | None = None  # on a configured server: this run is alive
        self._lost = False  # the server stopped answering mid-run (see server_loss)
        self._progress = Progress(None)  # what _build is doing, said when slow
        self._aside: _Aside | None = None  # the working database, made in a thread (start)
        self._listening = False  # _wait_for_working is a do_connect listener
        self._aside_started = False  # start() was called: the working database is made aside

    @property
    def ready(self) -> bool:
        return self._url is not None

    @property
    def admin_url(self) -> URL | None:
        """The server's admin URL, once the server was started or found (else None)."""
        server = self._server
        return None if server is None else server.info.admin_url

    def mark_lost(self) -> None:
        """The server stopped answering: later tests get that error, the end drops nothing
        (under xdist, neither the controller's nor the other workers' end: see ``SharedRun``)."""
        with self._lock:
            self._lost = True
            self._failure = DatabaseError(
                f"The PostgreSQL server {self.description} stopped answering earlier in this run."
            )
        if self.plan.shared is not None:
            self.plan.shared.mark_lost()

    def working_url(self) -> DatabaseURL:
        """The URL (with the configured driver) of this worker's test database; made on the
        first call, or, after ``start``, waited for."""
        with self._lock:
            if self._failure is not None:
                # Every test asking again would start a server again: report the first error.
                raise self._failure.with_traceback(None)  # not lengthened by each raise
            if self._url is None:
                with self._keeping_failure():
                    aside = self._aside
                    if aside is None:
                        self._url = self._build()
                    else:
                        try:
                            aside.wait(self.plan.say)
                            self._url = aside.result()
                            self._aside = None
                        except BaseException:
                            self.close()  # as a failed _build does: at once, not at the end
                            raise
            return self._url

    def start(self) -> None:
        """Make the server and the template now, and set ``testkit_database_env``; copy the
        template into the working database in a thread, which ``working_url`` waits for.

        Called before the conftest files are imported: the copy, a statement the server works
        at alone, overlaps with the app's import and the collection. Until it is done, a new
        connection of any SQLAlchemy engine to the working database waits for it.
        """
        with self._lock:
            if self._url is not None or self._failure is not None or self._aside is not None:
                return
            # Made aside, a clone costs the run nothing it would notice, while the next spare
            # (a copy made during the tests) would take the tests' CPU and, in a short run,
            # hold its end: no spare is made, and one an earlier run made is still claimed.
            self._aside_started = True
            with self._keeping_failure(), Progress(self.plan.say) as self._progress:
                prepared = self._build_in_steps()
            # Silent in the thread: pytest goes on meanwhile, and a line said from there would
            # toggle its capture under it. Whoever waits for the thread says what it does.
            self._progress = Progress(None)
            self._aside = _Aside(prepared)
            if not self._listening:
                event.listen(Engine, "do_connect", self._wait_for_working)
                self._listening = True

    @contextlib.contextmanager
    def _keeping_failure(self) -> Iterator[None]:
        try:
            yield
        except TestkitError as exc:
            self._failure = exc
            raise
        except psycopg.Error as exc:
            # A statement of the kit's own failed outside the steps that translate their
            # errors: most often the server ended under it. Kept as the kit's error, so that
            # the session stops once instead of building it all again.
            self._failure = DatabaseError(_build_failure(self.description, exc))
            raise self._failure from None

    def _wait_for_working(
        self, dialect: Any, record: Any, args: list[Any], params: dict[str, Any]
    ) -> None:
        """A ``do_connect`` listener: a connection to the working database being copied
        (from a conftest.py or a module imported at collection) waits for the copy."""
        __tracebackhide__ = True
        aside = self._aside
        if aside is None or dialect.name != "postgresql":
            return
        if target(params)[0] == aside.working:
            self.working_url()  # its error, if the copy failed

    def apply_env(self) -> None:
        """Set ``testkit_database_env`` variables for the working database (before app import)."""
        if self.settings.database_env:
            self.working_url()  # sets them before it imports the schema source

    @staticmethod
    def _allow(admin: URL, template: str, working: str) -> None:
        """Let engines of this process connect to these databases of the kit's (foreign_guard)."""
        guard().allow(admin.port, (template, working, spare_name(template, working)))

    def _set_env(self, url: URL) -> None:
        for name, value in self._env_for(url).items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def before_close(self, closer: Callable[[], None]) -> None:
        """Have ``close()`` call ``closer`` first, before it drops the databases."""
        self._closers.append(closer)

    def close(self) -> None:
        """Drop the databases the kit created, stop its server, restore the environment."""
        with self._lock:
            ended_well = False
            try:
                aside, self._aside = self._aside, None
                if aside is not None:
                    aside.join()  # what it made is dropped below; its error was reported
                if self._listening:
                    event.remove(Engine, "do_connect", self._wait_for_working)
                    self._listening = False
                while self._closers:
                    self._closers.pop()()
                # Also lost when another xdist worker found it so: the controller then drops
                # what the run made where it can (see xdist.stop_recorded_server).
                shared = self.plan.shared
                lost = self._lost or (shared is not None and shared.lost())
                if self._spare_maker is not None:
                    # Before the server stops under it; at once when the server is gone.
                    self._spare_maker.join(0 if lost else SPARE_WAIT)
                    self._spare_maker = None
                if self._server is not None and not lost:
                    self._drop_created(self._server.info.admin_url)
                ended_well = not lost
            finally:
                if self._run_lock is not None:
                    self._run_lock.release()  # after the drops: until then they are in use
                    self._run_lock = None
                if self._server is not None:
                    # A server that answered to the end shuts down on its own: a cached one
                    # is not waited for (the next run waits if it must). One that was lost
                    # may hang, and is stopped the whole way (fast, immediate, SIGKILL).
                    self._server.stop(wait=not ended_well)
                    self._server = None
                self._url = None
                for name, value in self._saved_env.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
                self._saved_env.clear()

    def _drop_created(self, admin: URL) -> None:
        try:
            for name in reversed(self._created):
                drop_database(admin, name)
        except DatabaseError:
            # A server that died after the last test: nothing to drop them on. A configured
            # server's next run drops them (this run's lock is gone), an embedded one is deleted.
            if self.admin_url is None or server_answers_at(self.admin_url):
                raise
            if self.plan.shared is not None:
                self.plan.shared.mark_lost()  # the controller need not wait on it again
        self._created.clear()

    def _env_for(self, url: URL) -> Mapping[str, str]:
        driver_url = url.set(drivername=f"postgresql+{self.settings.database_driver}")
        return render_env(self.settings.database_env, url, driver_url)

    def _build(self) -> DatabaseURL:
        with Progress(self.plan.say) as self._progress:
            prepared = self._build_in_steps()
            try:
                prepared.finish()
            except BaseException:
                self.close()
                raise
            return prepared.url

    def _build_in_steps(self) -> _Prepared:
        """Every step but the last (the working database): ``finish`` does that one."""
        started = time.monotonic()
        shared = self.plan.shared
        run_id = shared.run_id if shared is not None else RUN_ID
        try:
            if shared is None:
                server = self._server = self._start_server(None)
                self.description = server.info.description  # also after a failed schema build
                self.provenance["server_seconds"] = round(server.startup_seconds, 3)
                self._hold_run_lock(server, run_id)
                template, working = self._names(server, run_id)
                template = self._template(server, template, working, run_id)
            else:
                server, template, working = self._shared_template()
            admin = server.info.admin_url
            self._allow(admin, template, working)
            self._set_env(database_url(admin, working, None))  # again: a reader of the record
            driver = self.settings.database_driver
            url = database_url(admin, working, "asyncpg" if driver == "asyncpg" else "psycopg")
            found = DatabaseURL(url.render_as_string(hide_password=False))

            def finish() -> None:
                self._working_database(admin, template, working, run_id)
                self.description = f"{server.info.description}, database {working}"
                self.provenance["seconds"] = round(time.monotonic() - started, 3)

            return _Prepared(found, working, finish)
        except BaseException:
            self.close()
            raise

    def _working_database(self, admin: URL, template: str, working: str, run_id: str) -> None:
        """Clone the template, or claim the cached template's spare clone and make the next
        (not when the clone is made aside, see ``start``)."""
        key = self._template_key
        spare = spare_name(template, working) if key is not None else None
        if self._working_built:
            self.provenance["database"] = "built beside the template"
        elif (
            key is not None
            and spare is not None
            and (self._spares is None or spare in self._spares)  # else none to look for
            and claim_spare(admin, spare, working, key, run_id)
        ):
            self.provenance["database"] = "spare"
            self._created.append(working)
        else:
            self._progress.step(f"copying the template database into {working}")
            create_database(admin, working, template=template, run_id=run_id, locked=self._locked)
            self.provenance["database"] = "cloned"
            self._created.append(working)
        if key is not None and spare is not None and not self._aside_started:
            self._spare_maker = SpareMaker(admin, template, spare, key)

    def _start_server(self, owner_pid: int | None) -> RunningServer:
        if self.settings.database_url:
            self._progress.step("connecting to the configured PostgreSQL server")
        else:
            self._progress.step("starting the kit's own PostgreSQL server")
        return start_server(
            self.settings.database_url,
            tcp=self.settings.server_tcp,
            cache=self.plan.cache,
            owner_pid=owner_pid,
        )

    @property
    def _locked(self) -> bool:
        return self._run_lock is not None

    def _hold_run_lock(self, server: RunningServer, run_id: str) -> None:
        """On a configured server: show the server this run is alive while it has databases."""
        if server.info.source == "url" and self._run_lock is None:
            self._run_lock = RunLock(server.info.admin_url, run_id)

    def _names(self, server: RunningServer, run_id: str) -> tuple[str, str]:
        admin = server.info.admin_url
        shared = server.info.source == "url"
        base = admin.database if shared and admin.database else None
        token = run_token(run_id) if shared else None
        template, working = test_database_names(base or DEFAULT_BASE_NAME, self.worker_id, token)
        if self.worker_id and self.plan.shared is None:
            # xdist without the kit's hand-over (e.g. --tx without -n): a template per worker.
            template = f"{working}{TEMPLATE_SUFFIX}"
        return template, working

    def _shared_template(self) -> tuple[RunningServer, str, str]:
        """Under xdist: the run's server and template, set up by the first worker to ask."""
        shared = self.plan.shared
        assert shared is not None
        with shared.locked():
            record = shared.read()
            if record is not None:
                attached, template = recorded_server(record)
                self._template_key = recorded_template_key(record)
                self._server = attached
                self.description = attached.info.description
                self.provenance["shared"] = "attached"
                self._hold_run_lock(attached, shared.run_id)
                return attached, template, self._names(attached, shared.run_id)[1]
            try:
                server = self._start_server(shared.owner_pid)
            except TestkitError as exc:
                shared.write(failure_record(str(exc)))
                raise
            self._server = server
            self.description = server.info.description
            try:
                self._hold_run_lock(server, shared.run_id)
                template, working = self._names(server, shared.run_id)
                template = self._template(server, template, working, shared.run_id)
            except TestkitError as exc:
                shared.write(failure_record(str(exc)))
                raise
            # From now on the controller drops the run's databases and stops the server.
            shared.write(server_record(server, template, self._template_key))
            self._server = RunningServer(server.info)
            self._created = [name for name in self._created if name != template]
            self.provenance["shared"] = "started"
            return server, template, working

    def _template(self, server: RunningServer, template: str, working: str, run_id: str) -> str:
        """Make the template hold the schema: reuse a cached (or, on a configured server, a
        kept) one built for the same schema. Returns the name of the template to clone."""
        admin = server.info.admin_url
        self._allow(admin, template, working)
        # Before the schema source is imported: models modules often import the app's
        # settings, which read these variables once.
        self._set_env(database_url(admin, working, None))
        if self._locked:
            # What killed runs left on the shared server (their locks are free).
            dropped, failed = drop_dead_runs(admin)
            self.provenance["dropped_leftovers"] = dropped
            if failed:
                warnings.warn(_leftovers_message(admin, failed), LeftoverWarning, stacklevel=2)
        cache = self.plan.cache if server.keep else None
        key = None
        if cache is not None:
            self.provenance["cluster"] = "reused" if cache.reused_cluster else "initdb"
            fingerprint = schema_fingerprint(self.settings.schema, self.rootdir)
            key = template_key(fingerprint, server.info.version_num) if fingerprint else None
            # The cluster's check at its start (see check_cached_template) kept the template
            # only if it was whole, and dropped every other database but its spares.
            checked = cache.checked or frozenset()
            ready = key is not None and cache.template_ready(key) and template in checked
            claimable = claimable_spares(template, working)
            if ready and claimable is not None and checked - {template} - claimable:
                # Under xdist: the spares of workers this run does not have would stay for good.
                drop_databases_except(admin, {template, *(checked & claimable)})
            if ready:
                self.provenance["template"] = "reused"
                self._template_key = key
                self._spares = checked - {template}
                return template
            cache.set_template(None)  # a rebuild killed half-way must not count as complete
            drop_databases_except(admin, set())  # the old template, its spares, leftovers
            self._spares = frozenset()
        kept = self._kept_template(server, run_id) if cache is None else None
        if kept is not None and kept.reusable:
            self.provenance["template"] = "kept"
            self._allow(admin, kept.name, working)
            return kept.name
        source = self.settings.schema
        self._progress.step(f"building the template database ({_how_built(source)})")
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="testkit-schema") as pool:
            # create_all is cheap: building the working database with it at the same time
            # saves copying the template afterwards (0.3 s here). Migrations are not run twice.
            beside = None
            if source is None or not source.startswith(ALEMBIC_PREFIX):
                beside = pool.submit(self._new_database, admin, working, run_id)
            create_database(
                admin,
                template,
                run_id=TEMPLATE_RUN_ID if cache else run_id,
                locked=self._locked,
            )
            if cache is None:
                self._created.append(template)
            self._build_schema_in(admin, template)
            if beside is not None:
                beside.result()  # its error, if any
        self.provenance["template"] = "built"
        if cache is not None:
            record_template(cache, key)
            self._template_key = key
            if self.plan.store is not None:
                self.plan.store.set_pointer(cache.folder)
        elif kept is not None and keep_template(admin, template, kept.name, kept.key):
            # Kept for the next runs: no longer this run's to drop.
            self._created.remove(template)
            self.provenance["template"] = "built and kept"
            self._allow(admin, kept.name, working)
            return kept.name
        return template

    def _kept_template(self, server: RunningServer, run_id: str) -> _Kept | None:
        """On a configured server (and unless the plan says otherwise): the template kept by
        earlier runs for this schema, and the name to keep this run's under if there is none.
        None: the schema cannot be told, or keeping is off."""
        if not (self.plan.keep_template and server.info.source == "url" and self._locked):
            return None
        admin = server.info.admin_url
        self._progress.step("looking for the template database kept by earlier runs")
        fingerprint = schema_fingerprint(self.settings.schema, self.rootdir)
        if fingerprint is None:
            return None
        key = template_key(fingerprint, server.info.version_num)
        base = admin.database or DEFAULT_BASE_NAME
        found = find_kept_template(admin, base, key, run_id, replace=self.plan.replace_kept)
        self.provenance["dropped_kept_templates"] = found.dropped
        return _Kept(found.name, key, found.reusable)

    def _new_database(self, admin: URL, name: str, run_id: str) -> None:
        create_database(admin, name, run_id=run_id, locked=self._locked)
        self._created.append(name)
        self._build_schema_in(admin, name)
        self._working_built = True

    def _build_schema_in(self, admin: URL, name: str) -> None:
        url = database_url(admin, name, None)
        build_schema(self.settings.schema, url, rootdir=self.rootdir, env=self._env_for(url))


def test_databases(config: pytest.Config) -> TestDatabases:
    """This process's TestDatabases (made on first use, closed at unconfigure)."""
    __tracebackhide__ = True
    databases = config.stash.get(DATABASES_KEY, None)
    if databases is None:
        databases = TestDatabases(
            get_settings(config),
            rootdir=config.rootpath,
            worker_id=xdist_worker_id(config),
            plan=server_plan(config),
        )
        config.stash[DATABASES_KEY] = databases
    return databases


def close_test_databases(config: pytest.Config) -> None:
    databases = config.stash.get(DATABASES_KEY, None)
    if databases is not None:
        databases.close()


test_databases.__test__ = False  # type: ignore[attr-defined]


def _build_failure(description: str, exc: psycopg.Error) -> str:
    """The message of a kit's statement that failed while it made this process's database."""
    reason = str(exc).strip().rstrip(".")
    return (
        f"The PostgreSQL server {description} failed a statement of the kit's while it made "
        f"this run's test database: {reason}. If the server ended or restarted (its log "
        "says why; the embedded server is started anew by the next run), run again. "
        "Fix otherwise: let the URL's user create, comment on, rename and drop databases "
        "(superuser, or CREATEDB and owner of the kit's databases) and read pg_stat_activity."
    )
