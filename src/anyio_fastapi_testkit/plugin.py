"""The pytest plugin: settings, conflict checks, fixture registration and async test collection.

Installed, it is loaded through the ``pytest11`` entry point. With plugin autoloading disabled,
load it with ``-p anyio_fastapi_testkit.plugin`` or ``pytest_plugins`` in the root conftest.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import inspect
import sys
import types
from collections.abc import Generator
from typing import Any

import pytest

from ._core.backends import ANYIO_BACKEND_DOC, check_backend_overrides, use_fixtures
from ._core.config import (
    Settings,
    add_options,
    get_settings,
    mark_configured,
    option,
    parse_early_options,
    read_settings,
    store_settings,
)
from ._core.errors import ConfigError, TestkitError
from ._core.urls import SecretURL, mask_url
from ._diagnostics.explanations import explain_exception
from ._diagnostics.frames import is_user_code, last_line_in, raised_by_the_kit
from ._diagnostics.interrupts import (
    TestInterrupted,
    asked_to_stop,
    cleaning_up,
    defer_until_configured,
    deliver_deferred,
    restore_sigterm,
    stop_on_sigterm,
)
from ._diagnostics.timeouts import MARKER, timed_fixture_setup
from ._diagnostics.watched import watched_test
from ._postgres.limits import limit_admin_waits
from ._provisioning.xdist import (
    abandon_server_ahead,
    finish_run,
    hand_to_worker,
    is_xdist_controller,
    plan_run,
    start_server_ahead,
)

FIXTURES_PLUGIN_NAME = "anyio_fastapi_testkit.fixtures"
SERVER_LOSS_PLUGIN_NAME = "anyio_fastapi_testkit.server_loss"
SESSION_PLUGIN_NAME = "anyio_fastapi_testkit.session"
# What every async test uses: the backend and the shared loop. The guard that checks that the
# test really runs on its backend is part of the test's wrapper (see _diagnostics.watched).
ASYNC_TEST_FIXTURES = ("anyio_backend", "_testkit_loop")


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    add_options(parser)
    # anyio's plugin runs the tests; make sure it is there when autoloading is disabled.
    import anyio.pytest_plugin

    if not pluginmanager.is_registered(anyio.pytest_plugin) and not pluginmanager.has_plugin(
        "anyio"
    ):
        pluginmanager.register(anyio.pytest_plugin, "anyio")


def _session_fixtures(config: pytest.Config, backends: tuple[str, ...]) -> types.ModuleType:
    """A plugin module of this session's own fixtures: the configured backends, and
    ``_testkit_config``, the config that the kit's session fixtures read.

    Bound to the config, ``_testkit_config`` needs no ``pytestconfig``, which asks for
    ``request`` (pytest builds a definition of ``request`` anew for every test whose closure
    holds a fixture asking for it, even once the fixture's value is cached).

    The backends' fixture is parametrized (test ids ``[asyncio]``, ``[trio]``) only when there
    are several, as anyio's own ``anyio_backend`` is not: parametrizing every test with a
    single value would cost a parametrized copy of each test at collection to say what the
    one backend already says.
    """
    if len(backends) == 1:
        (only,) = backends

        def backend() -> Any:
            return only

        params: tuple[str, ...] | None = None
    else:

        def backend(request: pytest.FixtureRequest) -> Any:  # type: ignore[misc]
            return request.param

        params = backends
    backend.__doc__ = ANYIO_BACKEND_DOC
    # anyio_backend itself, and under the name that the fixtures module's copy for conftest.py
    # files (`import *`) asks for.
    anyio_backend = pytest.fixture(backend, scope="session", params=params, name="anyio_backend")
    # A copy of the function, for a docstring of its own in `pytest --fixtures -v`.
    internal = types.FunctionType(
        backend.__code__, backend.__globals__, "_testkit_backend", None, backend.__closure__
    )
    internal.__doc__ = (
        "Internal to the kit: the backend, for the conftest.py copy of ``anyio_backend``; "
        "tests use ``anyio_backend``."
    )
    _testkit_backend = pytest.fixture(
        internal, scope="session", params=params, name="_testkit_backend"
    )
    plugin = types.ModuleType(SESSION_PLUGIN_NAME)
    plugin.anyio_backend = anyio_backend  # type: ignore[attr-defined]
    plugin._testkit_backend = _testkit_backend  # type: ignore[attr-defined]

    def _testkit_config() -> pytest.Config:
        """Internal to the kit: the session's config; tests use ``pytestconfig``."""
        return config

    config_fixture = pytest.fixture(_testkit_config, scope="session")
    plugin._testkit_config = config_fixture  # type: ignore[attr-defined]
    return plugin


def _check_pytest_asyncio(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("asyncio"):
        return
    mode = config.getoption("asyncio_mode", default=None) or config.getini("asyncio_mode")
    if mode == "auto":
        raise ConfigError(
            "pytest-asyncio is active in auto mode (asyncio_mode = auto) beside "
            "anyio-fastapi-testkit: it would run every async test on a fresh event loop of its "
            "own, outside the kit's shared loop. Fix one of: remove asyncio_mode = auto (strict "
            "is pytest-asyncio's default), add `-p no:asyncio` to addopts, or uninstall "
            "pytest-asyncio."
        )


_EARLY_ENV_KEY = pytest.StashKey[bool]()


def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    # A plain hook: after pytest's own `pythonpath` (tryfirst) and before it imports the
    # conftest.py files (trylast), which often import the app and with it its settings.
    config = early_config
    parse_early_options(config, parser, args)
    if (
        is_xdist_controller(config)  # it runs no test: its workers set their own
        or option(config, "help")
        or option(config, "version")
    ):
        return
    try:
        settings = read_settings(config, check_backends=False)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not settings.database_env:
        return
    store_settings(config, settings)
    limit_admin_waits(settings.timeout)
    if option(config, "testkit_doctor"):  # it reports, instead of stopping the run
        from ._core.import_order import EARLY_IMPORTS_KEY, imported_too_early

        early = imported_too_early(settings)
        config.stash[EARLY_IMPORTS_KEY] = early
        if not early:
            # As in a test run, so that a conftest.py importing the app sees the test
            # database; a failure is kept by the databases, and the doctor reports it.
            plan_run(config, settings)
            with contextlib.suppress(TestkitError):
                _run_databases().test_databases(config).apply_env()
            atexit.register(_close_run, config)
        return
    stop_on_sigterm()  # CI's cancel while the database is prepared: clean up as on Ctrl-C
    # Marked first: an interrupt inside the next step is the wrapper's to clean up after.
    config.stash[_EARLY_ENV_KEY] = True
    _apply_database_env(config, settings, "by a plugin loaded at start-up")
    # pytest runs no unconfigure when a conftest.py then fails to import: drop and stop what
    # was made here at exit instead (a no-op once unconfigure has run).
    atexit.register(_close_run, config)


@pytest.hookimpl(wrapper=True, specname="pytest_load_initial_conftests")
def pytest_load_initial_conftests_interrupted(
    early_config: pytest.Config,
) -> Generator[None, None, None]:
    # Around the kit's step above and pytest's import of the conftest files (the app's, often
    # slow), while the working database is still being copied: pytest has no session yet to
    # end as interrupted, and a KeyboardInterrupt would escape its start-up as a traceback
    # with the database made. Clean up, then stop as interrupted.
    try:
        result = yield
    except KeyboardInterrupt as exc:
        if not early_config.stash.get(_EARLY_ENV_KEY, False):
            raise
        try:
            with cleaning_up():
                _close_run(early_config)
        finally:
            restore_sigterm()
        sys.stderr.write(
            f"anyio-fastapi-testkit: interrupted ({exc or 'SIGINT'}) while preparing the test "
            "database or importing the conftest files; the kit stopped and dropped what it "
            "had made.\n"
        )
        raise SystemExit(pytest.ExitCode.INTERRUPTED) from None
    if early_config.stash.get(_EARLY_ENV_KEY, False):
        defer_until_configured()  # no session to end as interrupted before then either
    return result


@pytest.hookimpl(trylast=True, specname="pytest_configure")
def pytest_configure_interrupted_before(config: pytest.Config) -> None:
    # Inside pytest's session now, after every plugin's configure (the terminal's too): a
    # signal deferred since the conftest files were imported ends the run as interrupted.
    deliver_deferred()


def _apply_database_env(config: pytest.Config, settings: Settings, imported_by: str) -> None:
    """Make the test database and set ``testkit_database_env`` for it, unless the app's
    modules were imported already (then stop: the app would run on the shell's settings)."""
    from ._core.import_order import imported_too_early, too_early_message

    early = imported_too_early(settings)
    if early:
        raise pytest.UsageError(too_early_message(early, imported_by))
    plan_run(config, settings)  # where the server comes from
    start_server_ahead(config, settings)  # it starts while _run_databases() imports
    try:
        _run_databases().test_databases(config).start()
    except TestkitError as exc:
        raise _early_failure(exc) from exc
    finally:
        abandon_server_ahead(config)  # if start() failed before it took the server


def _early_failure(exc: TestkitError) -> pytest.UsageError:
    return pytest.UsageError(
        "The test database is prepared before the app is imported (testkit_database_env "
        f"is set, and apps read it at import), and that failed: {exc}"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    # The working database started in pytest_load_initial_conftests is copied while the app
    # is imported and the tests collected: ready before the first test, or the run stops.
    config = session.config
    if config.stash.get(_EARLY_ENV_KEY, False):
        try:
            _run_databases().test_databases(config).working_url()
        except TestkitError as exc:
            raise _early_failure(exc) from exc


def _check_platform() -> None:
    """Refuse Windows once, clearly, before any POSIX-only part of the kit runs."""
    if sys.platform == "win32":
        raise pytest.UsageError(
            "anyio-fastapi-testkit supports POSIX systems only (Linux, macOS), and this is "
            "Windows (sys.platform == 'win32'). Unsupported there: the embedded PostgreSQL "
            "server (run as a system user the kit makes, its cache locked with fcntl), and "
            "stopping servers and cleaning up with POSIX signals. To fix: run the tests under "
            "WSL 2 or in a Linux container, or, for runs that do not use the kit, disable it "
            "with -p no:anyio_fastapi_testkit.plugin or uninstall anyio-fastapi-testkit."
        )


def pytest_configure(config: pytest.Config) -> None:
    _check_platform()
    mark_configured(config)
    # A cleanup, not unconfigure: it runs after pytest's own end-of-session garbage
    # collection passes (its unraisable-exception check), which then skip what is frozen.
    # Registered here, before the plugins configured after the kit register theirs.
    config.add_cleanup(lambda: unfreeze_collected(config))
    stop_on_sigterm()  # CI's cancel: clean up as on Ctrl-C
    config.addinivalue_line(
        "markers",
        f"{MARKER}(seconds): cancel and fail this async test after that many seconds, with "
        "the stack of every task (overrides testkit_timeout).",
    )
    try:
        _check_pytest_asyncio(config)
        settings = read_settings(config)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    store_settings(config, settings)
    limit_admin_waits(settings.timeout)
    manager = config.pluginmanager
    # Registered now, after every autoloaded plugin, so that the kit's session-scoped
    # anyio_backend wins over anyio's module-scoped one however the kit itself was loaded.
    if not _only_distributes(config):
        fixtures = _fixtures()
        if not manager.has_plugin(FIXTURES_PLUGIN_NAME) and not manager.is_registered(fixtures):
            manager.register(fixtures, FIXTURES_PLUGIN_NAME)
        if not manager.has_plugin(SERVER_LOSS_PLUGIN_NAME):
            from ._provisioning import server_loss as _server_loss

            manager.register(_server_loss, SERVER_LOSS_PLUGIN_NAME)
    if not manager.has_plugin(SESSION_PLUGIN_NAME):
        plugin = _session_fixtures(config, settings.backends)
        manager.register(plugin, SESSION_PLUGIN_NAME)
    if (
        settings.database_env
        and not is_xdist_controller(config)
        and not config.stash.get(_EARLY_ENV_KEY, False)
        and not option(config, "testkit_doctor")  # it checks this itself, and reports
    ):
        # The kit was loaded after the conftest files were imported (pytest_plugins in one):
        # still before collection, but a conftest.py may have imported the app already.
        _apply_database_env(config, settings, "by a conftest.py (the kit was loaded late)")
    plan_run(config, settings)  # where the server comes from; nothing is started yet
    if _manages_a_database(settings) and not is_xdist_controller(config):
        from ._provisioning.foreign_guard import guard

        guard().start()  # no engine connects anywhere but to the kit's databases


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    # As pytest's own --fixtures and --markers: report instead of running the session.
    if not config.getoption("testkit_doctor"):
        return None
    from ._doctor import run_doctor

    return run_doctor(config, _check_pytest_asyncio)


def pytest_unconfigure(config: pytest.Config) -> None:
    # Here rather than in a fixture finalizer, so that a session that failed or was
    # interrupted still drops its databases and stops its server.
    try:
        with cleaning_up():
            _close_run(config)
    finally:
        restore_sigterm()
    stop = asked_to_stop()
    session = config.stash.get(_SESSION_KEY, None)
    if (
        stop is not None
        and session is not None
        and session.exitstatus != pytest.ExitCode.INTERRUPTED
    ):
        # Asked to stop where no KeyboardInterrupt could reach pytest (during the cleanup,
        # or raised where Python discards it): the run still ends as interrupted.
        session.exitstatus = pytest.ExitCode.INTERRUPTED
        sys.stderr.write(
            f"anyio-fastapi-testkit: {stop.removeprefix('deferred ')} asked the run to stop; "
            "the kit finished its cleanup first.\n"
        )


_SESSION_KEY = pytest.StashKey[pytest.Session]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION_KEY] = session


def _manages_a_database(settings: Settings) -> bool:
    """Whether the kit makes the tests' database: then the app may use no other."""
    return any(
        (
            settings.database_url,
            settings.schema,
            settings.session_dependency,
            settings.sessionmaker,
            settings.database_env,
        )
    )


_CLOSED_KEY = pytest.StashKey[bool]()


def _close_run(config: pytest.Config) -> None:
    if config.stash.get(_CLOSED_KEY, False):
        return
    config.stash[_CLOSED_KEY] = True
    foreign = sys.modules.get("anyio_fastapi_testkit._provisioning.foreign_guard")
    if foreign is not None:
        foreign.guard().stop()
    try:
        run_databases = sys.modules.get(_RUN_DATABASES)
        if run_databases is not None:  # else no test database was made in this process
            run_databases.close_test_databases(config)
    finally:
        finish_run(config)  # the xdist controller stops the workers' shared server


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    # pytest-xdist's controller, for each worker it starts: hand over the shared run.
    hand_to_worker(node.config, node.workerinput)


def _only_distributes(config: pytest.Config) -> bool:
    """True in pytest-xdist's controller when it hands the tests to workers: it collects no
    test and sets up no fixture, so it does not load the kit's fixtures (nor SQLAlchemy,
    psycopg and the app's libraries with them) before it starts the workers. It still does
    for ``--collect-only``, which xdist does not distribute, and for ``--fixtures`` and
    ``--fixtures-per-test``, which list them.
    """
    if not is_xdist_controller(config):
        return False
    listing = ("collectonly", "showfixtures", "show_fixtures_per_test")
    return not any(config.getoption(name, default=False) for name in listing)


_RUN_DATABASES = "anyio_fastapi_testkit._provisioning.run_databases"


def _run_databases() -> types.ModuleType:
    """The module that makes and drops the run's databases, imported on first use (it loads
    SQLAlchemy and psycopg, which pytest-xdist's controller does without)."""
    return importlib.import_module(_RUN_DATABASES)


def _fixtures() -> types.ModuleType:
    """The kit's fixtures module, imported on first use (see ``_only_distributes``)."""
    module = sys.modules.get(FIXTURES_PLUGIN_NAME)
    return module if module is not None else importlib.import_module(FIXTURES_PLUGIN_NAME)


def _is_async_test(obj: object) -> bool:
    inner = getattr(getattr(obj, "hypothesis", None), "inner_test", obj)
    return inspect.iscoroutinefunction(inner)


def _left_to_pytest_asyncio(collector: pytest.Module | pytest.Class, obj: object) -> bool:
    own_marks = getattr(obj, "pytestmark", [])
    if not isinstance(own_marks, list):
        own_marks = [own_marks]
    return (
        any(getattr(mark, "name", None) == "asyncio" for mark in own_marks)
        or collector.get_closest_marker("asyncio") is not None
    )


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    __tracebackhide__ = True
    original = pyfuncitem.obj
    watched = watched_test(pyfuncitem, get_settings(pyfuncitem.config))
    if watched is None:
        return (yield)
    # anyio runs whatever coroutine function the item holds: hand it the watched wrapper.
    pyfuncitem.obj = watched
    try:
        return (yield)
    except TestInterrupted as exc:
        # Raised outside the loop, once the test was cancelled and the kit's teardown ran.
        pyfuncitem.config.stash[_INTERRUPTED_KEY] = str(exc)
        raise exc.as_keyboard_interrupt(str(pyfuncitem.path)) from None
    finally:
        pyfuncitem.obj = original


_INTERRUPTED_KEY = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    interrupted = terminalreporter.config.stash.get(_INTERRUPTED_KEY, None)
    if interrupted is not None:
        terminalreporter.write_sep("=", "interrupted test")
        terminalreporter.write_line(interrupted)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, object, object]:
    __tracebackhide__ = True
    _fixtures().promote_to_closer(fixturedef, request)
    # First, so that anyio's own wrapper (which runs async fixtures) runs the timed function.
    timed = timed_fixture_setup(fixturedef, request, get_settings(request.config).timeout)
    if timed is None:
        return (yield)
    func = fixturedef.func
    # Swapped only for this call, as anyio swaps it: public attribute, typed Final.
    fixturedef.func = timed  # type: ignore[misc]
    try:
        return (yield)
    finally:
        fixturedef.func = func  # type: ignore[misc]


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    # pytest diffs the text of strings, not their reprs: keep passwords out of the diff.
    if not isinstance(left, SecretURL) and not isinstance(right, SecretURL):
        return None
    shown = [mask_url(str(side)) if isinstance(side, str) else repr(side) for side in (left, right)]
    return [f"{shown[0]} {op} {shown[1]}", "(database URLs are shown with the password masked)"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    excinfo = call.excinfo
    if excinfo is None:
        return report
    if report.skipped:
        _skip_at_the_test(item, report, excinfo.tb)
    elif report.failed:
        # From the exceptions' types and messages: rendering the traceback again to search it
        # would cost every failing test a second report.
        explanation = explain_exception(excinfo.value)
        if explanation is not None:
            report.sections.append(("anyio-fastapi-testkit: the event loop trap", explanation))
        if call.when == "setup" and isinstance(excinfo.value, TestkitError):
            _stop_at_setup_failure(item, excinfo.value)
            report.longrepr = _without_library_frames(item.config, excinfo) or report.longrepr
    return report


def _without_library_frames(
    config: pytest.Config, excinfo: pytest.ExceptionInfo[BaseException]
) -> Any:
    """The report of a kit's error, with the frames of the test's and the app's own code only.

    The kit's errors say what was checked and how to fix it; the frames of the kit, anyio and
    pytest that led there would only bury that. ``--full-trace`` shows them all, and the
    styles that show no frames are left as they are. Made once per session (see
    ``_stop_at_setup_failure``).
    """
    style = config.getoption("tbstyle", "auto")
    if config.getoption("fulltrace", False) or style not in ("auto", "long", "short"):
        return None

    def own_frames(info: pytest.ExceptionInfo[BaseException]) -> Any:
        return info.traceback.filter(
            lambda entry: is_user_code(entry.frame.code.raw) and not entry.ishidden(info)
        )

    return excinfo.getrepr(
        funcargs=True,
        showlocals=config.getoption("showlocals", False),
        style="short" if style == "short" else "long",
        tbfilter=own_frames,
        truncate_locals=config.get_verbosity() <= 1,
    )


def _stop_at_setup_failure(item: pytest.Item, error: TestkitError) -> None:
    """Stop the session after the first test whose set-up failed on the kit's own error.

    The kit's set-up (the app, its lifespan, the server, the schema, the settings) is shared
    by the tests: every later test would fail on the same error, each with its own report.
    As ``--maxfail`` does, the session stops after this test, and its summary says why.
    """
    session = item.session
    if session.shouldfail or session.shouldstop:
        return
    first_line = str(error).strip().partition("\n")[0]
    if len(first_line) > 200:
        first_line = first_line[:197] + "..."
    try:
        not_run = len(session.items) - session.items.index(item) - 1
    except ValueError:
        not_run = 0
    session.shouldfail = (
        f"anyio-fastapi-testkit could not set up {item.nodeid}: {type(error).__name__}: "
        f"{first_line} -- reported once, above; the session stops here "
        f"({not_run} more test{'' if not_run == 1 else 's'} not run), as the other tests "
        "share that set-up"
    )


def _skip_at_the_test(
    item: pytest.Item, report: pytest.TestReport, tb: types.TracebackType | None
) -> None:
    """Report a skip that the kit raised (an async database fixture on trio) at the test's own
    line rather than at the kit's (``-rs``): the innermost line of the test's file that led to
    it, else the test's definition."""
    longrepr = report.longrepr
    if not (isinstance(longrepr, tuple) and len(longrepr) == 3):
        return
    _, _, reason = longrepr
    if not raised_by_the_kit(tb):
        return
    test_file = str(item.path)
    line = last_line_in(tb, test_file)
    if line is None:
        where, zero_based, _ = item.reportinfo()
        test_file, line = str(where), (zero_based or 0) + 1
    report.longrepr = (test_file, line, reason)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> None:
    # Async tests need no marker: give each the backend, shared loop and guard fixtures.
    # Tests marked for pytest-asyncio (strict mode) stay with it.
    if (
        collector.istestfunction(obj, name)
        and _is_async_test(obj)
        and not _left_to_pytest_asyncio(collector, obj)
    ):
        use_fixtures(obj, ASYNC_TEST_FIXTURES)


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    fixtures = _fixtures()
    if not config.option.collectonly and not is_xdist_controller(config):
        if not any(config.getoption(name, default=False) for name in _LISTINGS):
            check_backend_overrides(session, _backends_setting(config))
        # The app is imported before the first test rather than in it (see preload_app).
        fixtures.preload_app(config)
        if get_settings(config).gc_freeze:
            freeze_collected(config)


# pytest's options that list fixtures instead of running the tests (they collect them too).
_LISTINGS = ("showfixtures", "show_fixtures_per_test")


def _backends_setting(config: pytest.Config) -> str | None:
    """``testkit_backends`` as the run set it (flag or ini option), or None when unset."""
    backends = " ".join(get_settings(config).backends)
    if option(config, "testkit_backends"):
        return f"--testkit-backends={backends!r}"
    if config.getini("testkit_backends"):
        return f"testkit_backends = {backends!r}"
    return None


_FROZEN_KEY = pytest.StashKey[bool]()


def freeze_collected(config: pytest.Config) -> None:
    """Take what is alive now out of the garbage collector's reach until the session ends.

    A full pass of the collector visits every tracked object; after collection that is the
    app, its libraries and the collected tests (well over 100,000 objects), which all live
    until the session ends anyway, and a suite's tests set off such passes as they allocate.
    Frozen (``gc.freeze()``), they are skipped. Without a collection first, which would cost
    one such pass: the few cycles of garbage alive now (a few KiB) stay frozen until the
    session ends.

    Thawed by a cleanup of the config, after the two full passes pytest makes at the end of
    the session (its unraisable-exception check): those skip what is frozen too.
    """
    gc.freeze()
    config.stash[_FROZEN_KEY] = True


def unfreeze_collected(config: pytest.Config) -> None:
    if config.stash.get(_FROZEN_KEY, False):
        config.stash[_FROZEN_KEY] = False
        gc.unfreeze()
