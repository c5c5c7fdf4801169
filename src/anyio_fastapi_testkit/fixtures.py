"""The kit's public fixtures.

The plugin registers this module by itself. To pin the fixtures in a ``conftest.py`` (for
instance when plugin autoloading is disabled and the plugin is loaded with
``-p anyio_fastapi_testkit.plugin``), ``from anyio_fastapi_testkit.fixtures import *`` imports
exactly the fixtures below and no hooks.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import pytest

from ._core.backends import ANYIO_BACKEND_DOC, backend_name
from ._core.config import Settings, get_settings, load_once
from ._core.errors import ConfigError
from ._core.imports import import_from_path
from ._diagnostics.timeouts import timeout_for
from ._diagnostics.watched import AROUND_CALL_KEY, runs_watched
from ._isolation.stash import TRANSACTION_KEY

# The database and HTTP stacks (SQLAlchemy, psycopg, httpx, Starlette) are imported by the
# fixtures that use them, not with this module, which the plugin registers in every run:
# a run, or a test, that needs no database does not pay for loading them.
if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

    from ._diagnostics.queries import QueryCounter, QueryLimit
    from ._http.app import ASGIApp
    from ._http.client import ClientFactory
    from ._http.websocket import WebSocketConnect
    from ._isolation.dependency import AsyncDatabase
    from ._isolation.sync import SyncDatabase, SyncTestTransaction
    from ._isolation.transaction import TestTransaction
    from ._provisioning.run_databases import DatabaseURL


__all__ = [
    "anyio_backend",  # noqa: F822 (made on access: see __getattr__)
    "app",
    "app_lifespan",
    "assert_max_queries",
    "assert_num_queries",
    "client",
    "client_factory",
    "count_queries",
    "database_url",
    "db_connection",
    "db_engine",
    "db_session",
    "db_session_sync",
    "dependency_overrides",
    "live_server",
    "websocket_connect",
]


@pytest.fixture(scope="session")
async def _testkit_loop(anyio_backend: object) -> AsyncIterator[None]:
    """Internal to the kit: keeps the backend's event loop for the session."""
    __tracebackhide__ = True
    # Holding a runner lease for the whole session keeps one event loop per backend alive
    # between tests; it is released when pytest moves on to the next backend.
    yield


_APP_KEY = pytest.StashKey["ASGIApp | ConfigError"]()


def preload_app(config: pytest.Config) -> None:
    """Import ``testkit_app`` (and the HTTP library) now, once the tests are collected.

    So that the first test does not pay for the app's import, as with a conftest.py that
    imports the app. A failure is kept for the ``app`` fixture to report, as if it had
    imported the app itself.
    """
    settings = get_settings(config)
    if settings.app is None:
        return
    from ._http.app import load_app
    from ._http.client import http_library

    app_path = settings.app
    with contextlib.suppress(ConfigError):  # kept, and reported by the app fixture
        load_once(config, _APP_KEY, lambda: load_app(app_path))
    with contextlib.suppress(ConfigError):  # reported by the client fixture, if it is used
        http_library(settings.http_client)


@pytest.fixture(scope="session")
def app(_testkit_config: pytest.Config) -> ASGIApp:
    """The app under test, imported from the ``testkit_app`` ini option (session-scoped).

    ``"pkg.module:app"`` names an app; ``"pkg.module:create_app()"`` calls a factory once per
    session. Override this fixture in conftest.py to build the app yourself (a conftest.py of
    a sub-folder may give its tests an app of their own). Cost: one import per session, done
    when the tests have been collected (before the first test runs). An error stops the
    session at the first test that needs the app (see the plugin).
    """
    __tracebackhide__ = True
    from ._http.app import load_app

    config = _testkit_config
    settings = get_settings(config)
    if settings.app is None:
        raise ConfigError(
            "No app to test: set testkit_app in [tool.pytest.ini_options] "
            '(e.g. testkit_app = "myproject.main:app"), or override the `app` fixture in '
            "conftest.py."
        )
    app_path = settings.app
    return load_once(config, _APP_KEY, lambda: load_app(app_path))


class _StartedApps:
    """The apps started on a backend: the first test's app, and any other app that a
    sub-folder's conftest.py overrides ``app`` with, started for the first test that needs it.

    pytest caches the session-scoped ``app_lifespan`` with the app of the first test that set
    it up, whatever app a later test's folder overrides ``app`` with: the clients take the
    started app from here instead, by the test's own ``app``.
    """

    def __init__(self, config: pytest.Config, task_group: anyio.abc.TaskGroup) -> None:
        self.config = config
        # id of the app -> the app ready for requests (which holds the app: ids not reused)
        self.started: dict[int, ASGIApp] = {}
        self._task_group = task_group
        self._stop = anyio.Event()

    async def start(self, app: ASGIApp) -> None:
        """Start ``app``'s lifespan in a task of its own, running until ``stop``."""
        __tracebackhide__ = True
        self.started[id(app)] = await self._task_group.start(self._serve, app)

    async def _serve(self, app: ASGIApp, *, task_status: anyio.abc.TaskStatus[ASGIApp]) -> None:
        __tracebackhide__ = True
        async with _running(app, self.config) as started:
            task_status.started(started)
            await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()


_STARTED_KEY = pytest.StashKey[_StartedApps]()


@contextlib.asynccontextmanager
async def _running(app: ASGIApp, config: pytest.Config) -> AsyncIterator[ASGIApp]:
    __tracebackhide__ = True
    from ._http.app import running_lifespan

    settings = get_settings(config)
    async with running_lifespan(
        app,
        startup_timeout=settings.startup_timeout,
        shutdown_timeout=settings.shutdown_timeout,
    ) as started:
        yield started


@pytest.fixture(scope="session")
async def app_lifespan(
    app: ASGIApp, anyio_backend: object, _testkit_config: pytest.Config
) -> AsyncIterator[ASGIApp]:
    """The app after its lifespan startup, ready for requests (session-scoped, per backend).

    Startup and shutdown run once per backend through asgi-lifespan; requests get a copy of
    the lifespan state. A failing or hung startup stops the session with the app's error.
    Limits: ``testkit_startup_timeout`` / ``testkit_shutdown_timeout``. Cost: one startup and
    one shutdown of the app per backend (and of each app a sub-folder's conftest.py gives).
    """
    __tracebackhide__ = True
    config = _testkit_config
    # The other apps' task group inside the app's lifespan: its startup error reaches the
    # test as it is, and the other apps, started later, shut down first.
    async with _running(app, config) as started, anyio.create_task_group() as task_group:
        apps = _StartedApps(config, task_group)
        apps.started[id(app)] = started
        config.stash[_STARTED_KEY] = apps
        try:
            yield started
        finally:
            del config.stash[_STARTED_KEY]
            apps.stop()


@pytest.fixture
async def _testkit_start_app(app: ASGIApp, _testkit_config: pytest.Config) -> None:
    """Internal to the kit: starts the lifespan of a test's app that is not started yet."""
    # Requested by the test's transaction only for an app not started yet on this backend:
    # one that a sub-folder's conftest.py overrides `app` with.
    __tracebackhide__ = True
    await _testkit_config.stash[_STARTED_KEY].start(app)


def _started_app(app: ASGIApp, app_lifespan: ASGIApp, config: pytest.Config) -> ASGIApp:
    """The test's app, started by ``app_lifespan`` or, for another app, by the test's
    transaction (``_testkit_start_app``)."""
    apps = config.stash.get(_STARTED_KEY, None)
    if apps is None:  # an app_lifespan fixture of the project's own
        return app_lifespan
    return apps.started[id(app)]


def _client_factory(app: ASGIApp, transaction: TestTransaction) -> ClientFactory:
    __tracebackhide__ = True
    from ._http.client import ClientFactory, http_library

    # The settings come through the transaction: a `request` argument would cost every test
    # a lookup of it by pytest.
    settings = transaction.database.databases.settings
    return ClientFactory(
        http_library(settings.http_client),
        app,
        base_url=settings.base_url,
        task_group=transaction.current_task_group,
        on_close=transaction.on_close,
    )


@pytest.fixture
def client(
    app: ASGIApp,
    app_lifespan: ASGIApp,
    _testkit_config: pytest.Config,
    _testkit_transaction: TestTransaction,
) -> Any:
    """An ``httpx.AsyncClient`` (or ``httpx2.AsyncClient``) on the started app.

    Requests go in-process through an ASGI transport to ``testkit_base_url``
    (``http://testserver``), on the test's own event loop. A new client per test, so cookies
    and headers never leak between tests, while the app, its lifespan and its pools are
    shared. Plain requests run the app inline, as httpx's ``ASGITransport`` does;
    ``client.stream(...)`` runs it in a task and returns the response as soon as it starts,
    so endless streams can be read piece by piece. The library is httpx2 when installed, else
    httpx (``testkit_http_client`` chooses). No ``async with`` needed: the kit closes the
    client, and any response left open, after the test. It is ``client_factory()``; more
    clients in the same test come from ``client_factory``. Cost: building one client (tens of
    microseconds).
    """
    __tracebackhide__ = True
    return _client_factory(_started_app(app, app_lifespan, _testkit_config), _testkit_transaction)()


@pytest.fixture
def client_factory(
    app: ASGIApp,
    app_lifespan: ASGIApp,
    _testkit_config: pytest.Config,
    _testkit_transaction: TestTransaction,
) -> ClientFactory:
    """``client_factory(**options)``: a new client on the started app at each call, as ``client``.

    For several clients in one test (an anonymous one and a logged-in one, two users): each
    call returns a new ``httpx.AsyncClient`` (or ``httpx2.AsyncClient``) with cookies and
    headers of its own, on the same app, event loop and test transaction as ``client`` (the
    session dependency override applies to all of them). ``options`` are the client's own
    keyword arguments: ``headers``, ``cookies``, ``base_url`` (default ``testkit_base_url``),
    ``follow_redirects``, ``auth``, ``timeout``... The kit closes every client it made, and
    any response left open, after the test (an async fixture of the test's own may still use
    them in its teardown). Typed as ``anyio_fastapi_testkit.ClientFactory``. Cost: nothing
    until called; each call costs what ``client`` does (tens of microseconds).
    """
    __tracebackhide__ = True
    return _client_factory(_started_app(app, app_lifespan, _testkit_config), _testkit_transaction)


@pytest.fixture
def websocket_connect(
    app: ASGIApp,
    app_lifespan: ASGIApp,
    _testkit_config: pytest.Config,
    _testkit_transaction: TestTransaction,
) -> WebSocketConnect:
    """``websocket_connect(path, **headers)``: an async websocket client on the started app.

    ``async with websocket_connect("/ws") as ws:`` then ``send_text/send_bytes/send_json``,
    ``receive_text/receive_bytes/receive_json`` and ``close(code)``, in-process on the test's
    own loop; a rejected handshake raises with the app's close code. Dependency overrides and
    the session dependency (sessions on the test's transaction) apply as with ``client``.
    Cost: nothing until a connection is opened.
    """
    __tracebackhide__ = True
    from ._http.websocket import websocket_connector

    return websocket_connector(_started_app(app, app_lifespan, _testkit_config))


@pytest.fixture(scope="session")
async def _testkit_live_server(app_lifespan: ASGIApp, anyio_backend: object) -> AsyncIterator[str]:
    """Internal to the kit: the server per backend; tests use ``live_server``."""
    __tracebackhide__ = True
    from ._http.live_server import live_server as serve_live

    async with serve_live(app_lifespan, backend_name(anyio_backend)) as url:
        yield url


@pytest.fixture
def live_server(_testkit_live_server: str, _testkit_transaction: TestTransaction) -> str:
    """Base URL (``http://127.0.0.1:PORT``) of the started app served on a real TCP socket.

    For tests that need real sockets: a browser, an outside client, a webhook callback. The
    server runs on the test's own event loop (uvicorn on asyncio, hypercorn on trio; extra
    ``live``), started once per backend on a free port; the app's lifespan is the kit's, not
    run again. During the test the app's session dependency yields sessions on the test's
    transaction as with ``client``. It serves the app of the first test that uses it on a
    backend (a sub-folder's conftest.py that overrides ``app`` does not change it). Cost: one
    server start per backend; nothing per test.
    """
    __tracebackhide__ = True
    return _testkit_live_server


@pytest.fixture
def dependency_overrides(
    app: ASGIApp,
) -> Iterator[dict[Callable[..., Any], Callable[..., Any]]]:
    """The app's ``dependency_overrides`` dict, restored to its previous state after the test.

    Set ``dependency_overrides[get_user] = fake_user`` in a test; whatever the test adds or
    removes is undone at teardown, also when the test fails. Cost: two dict copies.
    """
    __tracebackhide__ = True
    from ._http.client import override_dependencies

    with override_dependencies(app) as live:
        yield live


@pytest.fixture(scope="session")
def database_url(_testkit_config: pytest.Config) -> DatabaseURL:
    """URL of this worker's test database (a ``str``; its repr hides the password).

    The database is the kit's own ``test_...`` clone of a template holding the schema from
    ``testkit_schema``, on the server from ``testkit_database_url`` or on an embedded server;
    it is dropped at the end of the session. The driver is ``testkit_database_driver``'s.
    Cost: the first use in a session starts the server and builds the schema (1.5-2.5 s with
    the embedded server; about 0.3 s when the cluster and template cached by an earlier run
    are reused, see ``--testkit-fresh-db``); later uses are free.
    """
    __tracebackhide__ = True
    from ._provisioning.run_databases import test_databases

    return test_databases(_testkit_config).working_url()


@dataclass
class _AppBindings:
    """What the test's transaction binds into the app, loaded once from the settings."""

    sessionmaker: Any  # the app's async_sessionmaker (testkit_sessionmaker), or None
    session_options: dict[str, Any]
    dependency: Callable[..., Any] | None  # testkit_session_dependency
    dependency_path: str | None
    factories: list[type]
    # The apps checked to use the dependency: the `app` fixture's value, and any other app
    # that a sub-folder's conftest.py overrides it with.
    _checked: dict[int, ASGIApp] = field(default_factory=dict)

    def app(self, request: pytest.FixtureRequest) -> ASGIApp:
        """The test's app, whose session dependency is overridden; each app checked once to
        use the dependency.

        Looked up for each test (a folder's conftest.py may override ``app``), through the
        test's transaction rather than by a fixture argument of the kit's, which would need
        its own ``request`` (a cost pytest charges every test).
        """
        __tracebackhide__ = True
        app_object: ASGIApp = request.getfixturevalue("app")
        if id(app_object) not in self._checked:
            from ._http.app import check_uses_dependency

            assert self.dependency is not None and self.dependency_path is not None
            check_uses_dependency(app_object, self.dependency, self.dependency_path)
            self._checked[id(app_object)] = app_object  # kept: its id is not reused
        return app_object


_BINDINGS_KEY = pytest.StashKey["_AppBindings | ConfigError"]()


def app_bindings(config: pytest.Config) -> _AppBindings:
    """What the tests' transactions bind into the app, loaded once per session (a failure is
    kept and raised again for every test that needs them, as a session fixture's would be).

    A function rather than a session fixture: pytest resolves every session fixture of a
    test's closure again for each test, and keeps a finalizer of the test's on it.
    """
    __tracebackhide__ = True
    return load_once(config, _BINDINGS_KEY, lambda: _load_bindings(get_settings(config)))


def _load_bindings(settings: Settings) -> _AppBindings:
    __tracebackhide__ = True
    from ._isolation.factories import load_factories
    from ._isolation.sessionmaker import check_sessionmaker, session_options

    maker = None
    if settings.sessionmaker is not None:
        maker = check_sessionmaker(
            import_from_path(
                settings.sessionmaker, "testkit_sessionmaker", what="the app's async_sessionmaker"
            ),
            settings.sessionmaker,
        )
    factories = load_factories(settings.factories)
    dependency: Callable[..., Any] | None = None
    if settings.session_dependency is not None:
        dependency = import_from_path(
            settings.session_dependency, "testkit_session_dependency", what="the session dependency"
        )
    return _AppBindings(
        maker, session_options(maker), dependency, settings.session_dependency, factories
    )


@pytest.fixture(scope="session")
async def _testkit_async_database(
    anyio_backend: object, _testkit_config: pytest.Config
) -> AsyncIterator[AsyncDatabase]:
    """Internal to the kit: the test database, async; tests use ``db_engine``."""
    __tracebackhide__ = True
    from ._isolation.dependency import AsyncDatabase
    from ._provisioning.run_databases import test_databases

    database = AsyncDatabase(test_databases(_testkit_config), backend_name(anyio_backend))
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture(scope="session")
def _testkit_sync_database(_testkit_config: pytest.Config) -> Iterator[SyncDatabase]:
    """Internal to the kit: the test database, sync; tests use ``db_session_sync``."""
    __tracebackhide__ = True
    from ._isolation.sync import SyncDatabase
    from ._provisioning.run_databases import test_databases

    database = SyncDatabase(test_databases(_testkit_config))
    try:
        yield database
    finally:
        database.dispose()


def _anyio_backend(_testkit_backend: str) -> str:
    __tracebackhide__ = True
    return _testkit_backend


_anyio_backend.__doc__ = ANYIO_BACKEND_DOC
_anyio_backend.__name__ = _anyio_backend.__qualname__ = "anyio_backend"


def __getattr__(name: str) -> Any:
    # `anyio_backend` for conftest.py files that `import *`: a conftest's definition beats
    # anyio's own module-scoped one, whatever the order the plugins were loaded in. Made on
    # access rather than held by the module, so that the plugin, which registers this module,
    # does not register it beside the session's own (see plugin._session_fixtures): pytest
    # would resolve both, and `pytest --fixtures` list both.
    if name == "anyio_backend":
        return pytest.fixture(_anyio_backend, scope="session", name="anyio_backend")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_ASYNC_TRANSACTION = "_testkit_transaction"
_CLOSER = "_testkit_transaction_closer"
_CONNECT = "_testkit_connect"
_START_APP = "_testkit_start_app"
_STARTS_APP = "app_lifespan"
# Fixtures that need the shared connection at once: the transaction takes it in its own set-up,
# so that they can be plain fixtures, which cost a test less than async ones.
_NEEDS_CONNECTION = frozenset({"db_session", "db_connection"})


@pytest.fixture
def _testkit_sync_transaction(
    _testkit_sync_database: SyncDatabase, request: pytest.FixtureRequest
) -> Iterator[SyncTestTransaction]:
    """Internal to the kit: the test's sync transaction; tests use ``db_session_sync``."""
    __tracebackhide__ = True
    from ._isolation.sync import SyncTestTransaction

    bindings = app_bindings(request.config)
    transaction = SyncTestTransaction(_testkit_sync_database, bindings.session_options)
    databases = _testkit_sync_database.databases
    seconds = timeout_for(request.node, databases.settings.timeout)
    if seconds is not None:
        transaction.limit(seconds, "testkit_timeout")
    _testkit_sync_database.leaks.take_baseline()
    _testkit_sync_database.current = transaction
    try:
        yield transaction
    finally:
        _testkit_sync_database.current = None
        transaction.close()
    # The async transaction, when the test has one, checks for both.
    if _ASYNC_TRANSACTION not in request.fixturenames:
        _testkit_sync_database.leaks.check()


@pytest.fixture
def _testkit_transaction(
    _testkit_async_database: AsyncDatabase, request: pytest.FixtureRequest
) -> Iterator[TestTransaction]:
    """Internal to the kit: the test's transaction; tests use ``db_session`` or ``client``."""
    # A plain fixture, and the only per-test one of the kit that the loop is needed for: for
    # an async test that the kit runs, the test's own call ends the transaction (see
    # run_in_transaction), so that the test enters the loop once; otherwise, and as soon as an
    # async fixture of the test's own comes after this one (see promote_to_closer), the closer
    # fixture ends it in its teardown.
    __tracebackhide__ = True
    from ._http.client import override_dependencies
    from ._isolation.dependency import is_async_dependency
    from ._isolation.factories import bound_factories
    from ._isolation.sessionmaker import bound_sessionmaker
    from ._isolation.transaction import TestTransaction

    database = _testkit_async_database
    bindings = app_bindings(request.config)
    transaction = TestTransaction(database, bindings.session_options)
    database.leaks.take_baseline()  # once, if the database is ready
    overrides: dict[Callable[..., Any], Callable[..., Any]] = {}
    app_object: ASGIApp | None = None
    if bindings.dependency is not None:
        app_object = bindings.app(request)
        if is_async_dependency(bindings.dependency):
            overrides[bindings.dependency] = database.dependency
        else:
            sync_transaction = request.getfixturevalue("_testkit_sync_transaction")
            overrides[bindings.dependency] = sync_transaction.database.dependency
    fixturenames = request.fixturenames
    if _STARTS_APP in fixturenames:
        # The test's client: on the test's own app, which a sub-folder's conftest.py may
        # override, started on this backend's first test that uses it.
        apps = request.config.stash.get(_STARTED_KEY, None)  # None: a project's own app_lifespan
        if app_object is None:
            app_object = request.getfixturevalue("app")
        if apps is not None and id(app_object) not in apps.started:
            request.getfixturevalue(_START_APP)
    if not _NEEDS_CONNECTION.isdisjoint(fixturenames) or (
        bindings.sessionmaker is not None and database.backend == "asyncio"
    ):
        connection = database.ready_connection()
        if connection is None:
            connection = request.getfixturevalue(_CONNECT)  # opens it on the loop, or skips
        transaction.take_connection(connection)
    request.node.stash[TRANSACTION_KEY] = transaction
    request.node.stash[AROUND_CALL_KEY] = transaction.around_call
    transaction.in_call = runs_watched(request.node, fixturenames)
    # Only what is configured is entered: every context costs the test its enter and exit.
    bound = contextlib.ExitStack()
    database.current = transaction
    try:
        if bindings.sessionmaker is not None:
            bound.enter_context(bound_sessionmaker(bindings.sessionmaker, transaction))
        if bindings.factories:
            bound.enter_context(bound_factories(bindings.factories, transaction))
        if overrides:
            bound.enter_context(override_dependencies(app_object, overrides))
        if not transaction.in_call:
            request.getfixturevalue(_CLOSER)
        yield transaction
    finally:
        try:
            bound.close()
        finally:
            database.current = None
            del request.node.stash[TRANSACTION_KEY]
            del request.node.stash[AROUND_CALL_KEY]
    if transaction.in_call:
        transaction.finish_after_call()


def promote_to_closer(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> None:
    """Before an async fixture of the test's own that comes after the kit's transaction: have
    the closer fixture end the transaction, after that fixture's teardown (which may use the
    database or the client) rather than in the test's call, which ends before it."""
    __tracebackhide__ = True
    if fixturedef.scope != "function":
        return
    transaction = request.node.stash.get(TRANSACTION_KEY, None)
    if transaction is None or not transaction.in_call:
        return
    func = fixturedef.func
    if getattr(func, "__module__", None) == __name__ or not (
        inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
    ):
        return
    transaction.in_call = False
    # Requested by that fixture: pytest tears it down before the closer.
    request.getfixturevalue(_CLOSER)


@pytest.fixture
async def _testkit_connect(_testkit_async_database: AsyncDatabase) -> AsyncConnection:
    """Internal to the kit: opens the shared connection; tests use ``db_connection``."""
    # Opened on the loop (skipped on trio). Requested by the test's transaction only when the
    # connection is not open yet: the first test of a backend, or the test after one that
    # broke it.
    __tracebackhide__ = True
    return await _testkit_async_database.shared_connection()


@pytest.fixture
async def _testkit_transaction_closer(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Internal to the kit: ends the test's transaction in its teardown."""
    # Opens the test's task group and, in its teardown, ends the test's transaction: for the
    # tests whose own call does not end it (see ``_testkit_transaction``). Cost: two trips into
    # the loop.
    __tracebackhide__ = True
    transaction = request.node.stash[TRANSACTION_KEY]
    client_error: BaseException | None = None
    async with anyio.create_task_group() as task_group:
        transaction.task_group = task_group
        try:
            yield
        finally:
            client_error = await transaction.close_clients()
            transaction.task_group = None
    await transaction.close()
    if client_error is not None:
        raise client_error


@pytest.fixture(scope="session")
async def db_engine(_testkit_async_database: AsyncDatabase) -> AsyncEngine:
    """``AsyncEngine`` on this worker's test database (session-scoped, one per backend).

    Driver from ``testkit_database_driver`` (psycopg by default). The async drivers run on
    asyncio only: on trio, tests that use it are skipped with that reason. Writes made through
    its own connections are committed for real; use ``db_connection``/``db_session`` for
    rolled-back work. Cost: made once per backend.
    """
    __tracebackhide__ = True
    return await _testkit_async_database.engine()


@pytest.fixture
def db_connection(_testkit_transaction: TestTransaction) -> AsyncConnection:
    """``AsyncConnection`` whose work during the test is rolled back after it.

    One connection serves the whole session (per backend), inside an outer transaction that
    the server rolls back after each test and begins anew (so ``now()`` moves from test to
    test). Shared by ``db_session`` and, through ``testkit_session_dependency``, by the app's
    requests. Calling ``commit()`` on it commits for real (the leak check reports it).
    asyncio only (skipped on trio). Cost: one ROLLBACK and BEGIN after the test, sent with
    the leak check.
    """
    __tracebackhide__ = True
    return _testkit_transaction.connection_now()


@pytest.fixture
def db_session(_testkit_transaction: TestTransaction) -> AsyncSession:
    """``AsyncSession`` on ``db_connection``, ``join_transaction_mode="create_savepoint"``.

    ``commit()``, ``rollback()``, ``begin_nested()`` and ``refresh()`` behave as in
    production, but only inside the test's outer transaction, which is rolled back after the
    test: the next test sees an empty database again. Options come from ``testkit_sessionmaker``
    (else ``expire_on_commit=False``). It is the test's own session: each request of the app
    gets a session of its own through ``testkit_session_dependency``, on the same connection
    and transaction (with these options), as in production. So the app loads what it reads
    from the database (a ``Numeric`` the test set as ``"4.00"`` reaches it as a ``Decimal``),
    its ``rollback()`` undoes only its own work, and what the test holds unflushed is flushed
    before each request, so the app sees it; objects this session already holds are not
    reloaded when the app changes their rows (``await db_session.refresh(obj)``). With
    ``testkit_share_session = true`` (for suites written for the shared-session recipe) the
    app's requests get this very session instead, with the test's objects, and a rollback in
    the app also undoes what the test flushed and expires its objects.
    A new session per test: listeners or ``info`` a test puts on it do not reach the next.
    asyncio only (skipped on trio). Cost: one SAVEPOINT at its first statement, beyond
    ``db_connection``'s.
    """
    __tracebackhide__ = True
    return _testkit_transaction.session_now()


@pytest.fixture
def db_session_sync(_testkit_sync_transaction: SyncTestTransaction) -> Session:
    """A sync SQLAlchemy ``Session`` (psycopg) in its own rolled-back outer transaction.

    Same savepoint rules as ``db_session``, for apps with sync (``def``) endpoints and
    dependencies: a sync ``testkit_session_dependency`` yields each request a session of its
    own on this session's connection and transaction, after flushing this one (this session
    itself with ``testkit_share_session``). Works on every backend. It is a separate
    connection from ``db_session``'s, so the two do not see each other's uncommitted data.
    Cost: one connection per test.
    """
    __tracebackhide__ = True
    return _testkit_sync_transaction.session()


@pytest.fixture
def count_queries() -> Iterator[QueryCounter]:
    """``with count_queries() as queries:`` (or ``async with``): the SQL statements the block ran.

    ``len(queries)`` is the count, ``queries.statements`` the SQL texts, in order. Counted:
    every statement any SQLAlchemy engine of the process sends during the block: the app's
    requests through ``client``, ``db_session``, ``db_connection``, ``db_session_sync``, the
    app's own sessionmakers and engines. Not counted: SAVEPOINT / RELEASE SAVEPOINT / ROLLBACK
    TO SAVEPOINT, which are the test's isolation and what the app's ``commit()`` becomes
    inside it (production sends no statement for COMMIT either), hence also the app's own
    ``begin_nested()``; and the kit's schema build and leak check. Bound values are kept only
    with ``count_queries(show_parameters=True)``. Works on every backend; needs no database.
    Cost: nothing outside blocks; inside, a listener call per statement (5-10 us measured).
    """
    __tracebackhide__ = True
    from ._diagnostics.queries import QueryCounter

    counter = QueryCounter()
    try:
        yield counter
    finally:
        counter.close()


@pytest.fixture
def assert_max_queries(request: pytest.FixtureRequest) -> Iterator[QueryLimit]:
    """``with assert_max_queries(3):`` fails the test if the block ran more than 3 statements.

    The failure names the test and lists the statements, numbered, without their bound values
    (``show_parameters=True`` adds them), and says how to fix it or raise the limit: the
    guard against N+1 queries in endpoints called through ``client``. Counts what
    ``count_queries`` counts; ``as queries`` gives the same list. A block that raises is not
    checked. Cost: ``count_queries``'s.
    """
    __tracebackhide__ = True
    from ._diagnostics.queries import QueryLimit

    limit = QueryLimit(exact=False, fixture="assert_max_queries", test=request.node.nodeid)
    try:
        yield limit
    finally:
        limit.close()


@pytest.fixture
def assert_num_queries(request: pytest.FixtureRequest) -> Iterator[QueryLimit]:
    """``with assert_num_queries(3):`` fails the test unless the block ran exactly 3 statements.

    As ``assert_max_queries``, and also fails when fewer ran, so that an improvement is
    noticed and the number kept tight. Cost: ``count_queries``'s.
    """
    __tracebackhide__ = True
    from ._diagnostics.queries import QueryLimit

    limit = QueryLimit(exact=True, fixture="assert_num_queries", test=request.node.nodeid)
    try:
        yield limit
    finally:
        limit.close()
