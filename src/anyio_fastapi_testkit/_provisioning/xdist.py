"""Where this process's server comes from: one server and template for all pytest-xdist workers,
the cache folder a run may use, and what the run must stop at the end.

Lazy: nothing starts until a test needs the database. Under xdist the controller decides at
configure time (it takes the cache lock, which must outlive every worker, and makes a shared
run folder) and hands both to each worker through ``workerinput``. The first worker that needs
the database starts the server and builds the template under the run folder's lock, and
records them there; the others read the record and only clone their own database. The
controller, which outlives the workers, drops every database of the run and stops the server
at unconfigure, also when the run failed or was interrupted. A process that found the server
lost (see ``server_loss``) says so in the run folder: the others then do not wait on it again.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .._core.config import Settings, option
from .._core.errors import DatabaseError
from .._diagnostics.interrupts import cleaning_up
from .._postgres.cache import (
    CacheLock,
    CacheStore,
    ClusterCache,
    make_cache_folder,
    remove_forgotten,
    remove_replaced,
    try_lock,
)
from .._postgres.cluster import stop_cluster
from .._postgres.state_folder import (
    STATE_PREFIX,
    open_private,
    prepare_base_dir,
    write_owner,
)
from .progress import terminal_line
from .template_check import check_cached_template

if TYPE_CHECKING:
    from .._postgres.server import RunningServer

try:
    import fcntl
except ImportError:  # not POSIX: every worker starts its own server, as without xdist
    fcntl = None  # type: ignore[assignment]

WORKERINPUT_KEY = "anyio_fastapi_testkit"
RECORD_FILE = "server.json"
LOCK_FILE = "lock"
LOST_FILE = "lost"  # made by the first process of the run that found the server lost


@dataclass
class SharedRun:
    """The run folder all workers share: the server record, and the lock of its creation."""

    folder: Path
    run_id: str  # in the ownership comment of every database of the run
    owner_pid: int  # the controller: servers started by workers are recorded as its own

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = open_private(self.folder / LOCK_FILE, os.O_WRONLY | os.O_APPEND)
        with os.fdopen(fd, "ab") as handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def read(self) -> dict[str, Any] | None:
        try:
            record = json.loads((self.folder / RECORD_FILE).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def write(self, record: dict[str, Any]) -> None:
        temporary = self.folder / f".{RECORD_FILE}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        temporary.replace(self.folder / RECORD_FILE)

    def mark_lost(self) -> None:
        """Tell the controller and the other workers that the server stopped answering.

        Through the run folder rather than xdist's ``workeroutput``: a worker may find the
        server lost at its own cleanup, after xdist has sent its output, and the other
        workers, which xdist tells nothing, drop their databases at theirs.
        """
        with contextlib.suppress(OSError):  # the run folder is gone: nobody left to tell
            os.close(open_private(self.folder / LOST_FILE, os.O_WRONLY))

    def lost(self) -> bool:
        """Whether a process of the run found the server lost (``mark_lost``)."""
        return (self.folder / LOST_FILE).exists()


def server_record(server: RunningServer, template: str, template_key: str | None) -> dict[str, Any]:
    """What workers and the controller need to know of a server another worker started."""
    info = server.info
    return {
        "source": info.source,
        "admin_url": info.admin_url.render_as_string(hide_password=False),
        "version_num": info.version_num,
        "description": info.description,
        "template": template,
        "template_key": template_key,  # of a cached template: workers claim its spares
        "state_dir": str(server.state_dir) if server.state_dir else None,
        "bin_dir": str(server.bin_dir) if server.bin_dir else None,
        "socket_dir": str(server.socket_dir) if server.socket_dir else None,
        "keep": server.keep,
    }


def recorded_template_key(record: dict[str, Any]) -> str | None:
    key = record.get("template_key")
    return key if isinstance(key, str) else None


def failure_record(message: str) -> dict[str, Any]:
    return {"failure": message}


def recorded_server(record: dict[str, Any]) -> tuple[RunningServer, str]:
    """A handle on the recorded server (its ``stop()`` does nothing) and the template's name."""
    failure = record.get("failure")
    if isinstance(failure, str):
        # Another worker failed to set it up: report its error rather than retry N times.
        raise DatabaseError(f"{failure}\n(reported by the xdist worker that set up the server)")
    from sqlalchemy.engine import make_url

    from .._postgres.server import RunningServer, ServerInfo

    info = ServerInfo(
        record["source"],
        make_url(record["admin_url"]),
        int(record["version_num"]),
        str(record["description"]),
    )
    return RunningServer(info), str(record["template"])


@dataclass
class ServerPlan:
    """How this process gets its server: the cache it may use, the run it shares."""

    cache: ClusterCache | None = None
    store: CacheStore | None = None  # pytest's cache, for the pointer to the cache folder
    shared: SharedRun | None = None
    # On a configured server: keep the template between runs (see ``kept_template``), as the
    # cache keeps the kit's own cluster: not with --testkit-fresh-db or -p no:cacheprovider.
    keep_template: bool = False
    replace_kept: bool = False  # --cache-clear: build it anew, and keep the new one
    say: Callable[[str], None] | None = None  # a line on the terminal (see ``progress``)


@dataclass
class _RunState:
    """What this process holds for the whole run (configure to unconfigure)."""

    plan: ServerPlan
    lock: CacheLock | None = None
    controller_input: dict[str, Any] | None = None  # handed to each xdist worker
    run_lock: _ControllerRunLock | None = None  # on a configured server (see liveness)


_STATE_KEY = pytest.StashKey[_RunState]()


# The controller's hand-over, also in the workers' environment: a worker sets
# testkit_database_env before its conftest.py files are imported, before xdist gives it its
# workerinput.
SHARED_RUN_ENV = "TESTKIT_XDIST_SHARED_RUN"
_XDIST_WORKER_ENV = "PYTEST_XDIST_WORKER"


def _inherited_hand_over() -> dict[str, Any] | None:
    """The controller's hand-over, when this process is one of its workers.

    xdist's variables and the kit's are inherited by any pytest run from inside a worker too
    (a test that runs pytest): only the controller's own children are its workers.
    """
    raw = os.environ.get(SHARED_RUN_ENV)
    if raw is None or _XDIST_WORKER_ENV not in os.environ:
        return None
    try:
        given = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(given, dict) or given.get("owner_pid") != os.getppid():
        return None
    return given


def is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput") or _inherited_hand_over() is not None


def xdist_worker_id(config: pytest.Config) -> str | None:
    """This worker's id (``gw0``...), None outside pytest-xdist's workers."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return str(workerinput["workerid"])
    return os.environ.get(_XDIST_WORKER_ENV) if _inherited_hand_over() is not None else None


def is_xdist_controller(config: pytest.Config) -> bool:
    """True in the process that only distributes tests to pytest-xdist workers.

    Also before ``pytest_configure``, where xdist has not yet turned ``-n`` into ``--dist``.
    """
    if is_xdist_worker(config):
        return False
    # -n N (N > 0) always distributes: xdist turns --dist no into load.
    return bool(option(config, "numprocesses"))


def plan_run(config: pytest.Config, settings: Settings) -> None:
    """Decide where this process's server comes from (nothing is started); once per run, at
    configure, or before the conftest files when ``testkit_database_env`` is set."""
    if _STATE_KEY in config.stash:
        return
    store = _store(config)
    state = _plan_run(config, settings, store)
    plan = state.plan
    plan.keep_template = bool(settings.database_url) and store is not None and not settings.fresh_db
    plan.replace_kept = bool(option(config, "cacheclear"))
    plan.say = terminal_line(config)
    config.stash[_STATE_KEY] = state


def start_server_ahead(config: pytest.Config, settings: Settings) -> None:
    """Launch the cached cluster's server now, when this run will start it: it then starts
    while the modules that use it (SQLAlchemy, psycopg) are imported. A run that does not
    take it stops it in ``finish_run``, or earlier with ``abandon_server_ahead``."""
    state = config.stash.get(_STATE_KEY, None)
    if state is None or settings.database_url:
        return
    plan = state.plan
    if plan.cache is not None and plan.shared is None:
        from .._postgres.local_install import start_cached_ahead

        start_cached_ahead(plan.cache, tcp=settings.server_tcp)


def abandon_server_ahead(config: pytest.Config) -> None:
    """Stop the server ``start_server_ahead`` launched, unless the run took it."""
    state = config.stash.get(_STATE_KEY, None)
    if state is not None and state.plan.cache is not None:
        state.plan.cache.abandon_ahead()


def _plan_run(config: pytest.Config, settings: Settings, store: CacheStore | None) -> _RunState:
    if is_xdist_worker(config):
        workerinput = getattr(config, "workerinput", None)
        given = workerinput.get(WORKERINPUT_KEY) if workerinput is not None else None
        if given is None:
            given = _inherited_hand_over()
        plan = _worker_plan(given, store) if isinstance(given, dict) else ServerPlan()
        return _RunState(plan)
    lock = _lock_cache(config, settings, store)
    rebuild = lock is not None and (
        _needs_rebuild(store, lock.folder) or bool(option(config, "cacheclear"))
    )
    cache = (
        ClusterCache(lock.folder, rebuild=rebuild, check_template=check_cached_template)
        if lock
        else None
    )
    state = _RunState(ServerPlan(cache, store), lock)
    if is_xdist_controller(config):
        state.controller_input = _start_shared_run(cache)
        # Inherited by the workers, which xdist starts after configure.
        os.environ[SHARED_RUN_ENV] = json.dumps(state.controller_input)
        config.pluginmanager.register(_LoadForFinish(config), _LOAD_FOR_FINISH)
        config.pluginmanager.register(_WorkersEnding(), _WORKERS_ENDING)
        if settings.database_url:
            run_id = str(state.controller_input["run_id"])
            state.run_lock = _ControllerRunLock(str(settings.database_url), run_id)
    return state


_LOAD_FOR_FINISH = "anyio_fastapi_testkit.xdist-load-for-finish"


class _LoadForFinish:
    """In the controller, at the first test report: import what ``finish_run`` needs.

    The controller imports neither psycopg nor SQLAlchemy before it starts the workers, so as
    not to delay them; loaded while the workers run their tests (the controller waits for
    them then), they do not delay the run's end either. Loaded in a thread: a SIGINT or
    SIGTERM lands in the main thread, and one that landed inside this import would leave
    importlib's frames, which have no line number, in the interrupt's traceback, where
    pytest's report of the interrupt fails on them. ``finish_run``'s own imports wait for it.
    """

    def __init__(self, config: pytest.Config) -> None:
        self._config = config

    def pytest_runtest_logreport(self) -> None:
        threading.Thread(target=_load_for_finish, name="testkit-load-for-finish").start()
        self._config.pluginmanager.unregister(self, _LOAD_FOR_FINISH)


_WORKERS_ENDING = "anyio_fastapi_testkit.xdist-workers-ending"


class _WorkersEnding:
    """In the controller: pytest-xdist's ``pytest_sessionfinish`` waits for the workers to
    end, and they drop their databases as they end (the kit's cleanup, which notes a signal
    rather than stop half-way). pytest turns a KeyboardInterrupt into an interrupted run only
    around collection and the test loop: a Ctrl-C or SIGTERM during that wait ended the
    controller in a traceback. It is noted instead, as during the kit's own cleanup
    (``cleaning_up``), and the run ends as interrupted once the workers are done; a second
    signal interrupts at once."""

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self) -> Generator[None, object, object]:
        with cleaning_up():
            return (yield)


def _load_for_finish() -> None:
    importlib.import_module("anyio_fastapi_testkit._provisioning.owned")
    importlib.import_module("sqlalchemy.engine")


class _ControllerRunLock:
    """The controller's share of the run's lock on a configured server (see ``liveness``).

    Held from configure until the controller has dropped the run's databases, so that the run
    counts as alive also when no worker holds the lock: after the worker that built the
    template has finished, before another one makes its database. Taken in a thread, so that
    the controller starts its workers while it loads psycopg and SQLAlchemy.
    """

    def __init__(self, configured_url: str, run_id: str) -> None:
        self._held: Any = None
        self._released = False
        self._guard = threading.Lock()
        self._thread = threading.Thread(
            target=self._take,
            args=(configured_url, run_id),
            name="testkit-run-lock",
            daemon=True,
        )
        self._thread.start()

    def _take(self, configured_url: str, run_id: str) -> None:
        try:
            from .._postgres.server import _parse_configured
            from .liveness import RunLock

            held = RunLock(_parse_configured(configured_url), run_id)
        except Exception:  # the workers report an unusable server (or URL) themselves
            return
        with self._guard:
            if not self._released:
                self._held = held
                return
        held.release()  # the run ended while this connected

    def release(self) -> None:
        """Release the lock; not waiting for a connection still being made (to a server
        that does not answer, up to its connect timeout): it is released once made."""
        with self._guard:
            self._released = True
            held, self._held = self._held, None
        if held is not None:
            held.release()


def server_plan(config: pytest.Config) -> ServerPlan | None:
    """The plan ``plan_run`` made for this process (None if it did not run)."""
    state = config.stash.get(_STATE_KEY, None)
    return state.plan if state is not None else None


def hand_to_worker(config: pytest.Config, workerinput: dict[str, Any]) -> None:
    """xdist's ``pytest_configure_node``: give the worker the shared run."""
    state = config.stash.get(_STATE_KEY, None)
    if state is not None and state.controller_input is not None:
        workerinput[WORKERINPUT_KEY] = state.controller_input


def finish_run(config: pytest.Config) -> None:
    """At unconfigure: the controller drops the run's databases and stops the shared server;
    every process releases the cache lock."""
    state = config.stash.get(_STATE_KEY, None)
    if state is None:
        return
    try:
        try:
            abandon_server_ahead(config)
            if state.controller_input is not None:
                os.environ.pop(SHARED_RUN_ENV, None)
                _finish_shared_run(state.controller_input)
        finally:
            if state.run_lock is not None:
                state.run_lock.release()  # after the drops: the run is alive until then
    finally:
        if state.lock is not None:
            state.lock.release()


def _store(config: pytest.Config) -> CacheStore | None:
    pytest_cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
    if pytest_cache is None and config.pluginmanager.has_plugin("cacheprovider"):
        # Before configure (testkit_database_env is set before the conftest files are
        # imported), pytest's cache provider has not made config.cache yet. pytest has no
        # public way to open its cache earlier: Cache.for_config is what the provider itself
        # calls (the tests of warm starts with testkit_database_env break if it changes).
        if not hasattr(config.option, "cacheclear"):
            # pytest 8.2 reads the option from config.option, which is filled after
            # this hook; the early options already have it (parse fills in the rest).
            config.option.cacheclear = bool(option(config, "cacheclear"))
        pytest_cache = pytest.Cache.for_config(config, _ispytest=True)
    return CacheStore(pytest_cache) if pytest_cache is not None else None


def _lock_cache(
    config: pytest.Config, settings: Settings, store: CacheStore | None
) -> CacheLock | None:
    if store is None or settings.fresh_db or settings.database_url:
        return None
    try:
        folder = make_cache_folder(None, _pytest_cache_dir(config))
    except (OSError, DatabaseError):
        return None  # no cache is no failure: a throwaway cluster works as before
    # Taken: another run (or a run's xdist workers) uses it; this one uses a throwaway.
    try:
        lock = try_lock(folder)
    except OSError:  # deleted meanwhile by another project's run (see remove_forgotten)
        return None
    if lock is not None:
        remove_replaced(store.pointer(), folder)
        remove_forgotten(folder)
    return lock


def _pytest_cache_dir(config: pytest.Config) -> Path:
    # As pytest resolves its cache_dir option, without making the folder.
    setting = os.path.expandvars(os.path.expanduser(str(config.getini("cache_dir"))))
    return config.rootpath / setting  # an absolute setting replaces the rootpath


def _needs_rebuild(store: CacheStore | None, folder: Path) -> bool:
    return store is None or store.pointer() != store.expected_pointer(folder)


def _worker_plan(given: dict[str, Any], store: CacheStore | None) -> ServerPlan:
    folder = given.get("cache_folder")
    cache = (
        ClusterCache(
            Path(folder),
            rebuild=bool(given.get("rebuild")),
            check_template=check_cached_template,
        )
        if isinstance(folder, str)
        else None
    )
    shared = SharedRun(Path(given["shared_dir"]), str(given["run_id"]), int(given["owner_pid"]))
    return ServerPlan(cache, store, shared)


def _start_shared_run(cache: ClusterCache | None) -> dict[str, Any]:
    base = prepare_base_dir(None)
    # Named like a state folder, with owner.json: a killed controller's is an orphan the next
    # run removes (see orphans), as it removes the throwaway cluster a worker started in the
    # controller's name; a cached one is stopped by cache.stop_abandoned.
    folder = Path(tempfile.mkdtemp(prefix=f"{STATE_PREFIX}xdist-", dir=base))
    write_owner(folder, None, None)
    return {
        "shared_dir": str(folder),
        "run_id": f"{os.getpid()}-{secrets.token_hex(4)}",
        "owner_pid": os.getpid(),
        "cache_folder": str(cache.folder) if cache else None,
        "rebuild": cache.rebuild if cache else False,
    }


def _finish_shared_run(given: dict[str, Any]) -> None:
    folder = Path(given["shared_dir"])
    shared = SharedRun(folder, str(given["run_id"]), int(given["owner_pid"]))
    try:
        with shared.locked():
            record = shared.read()
            if record is not None and "failure" not in record:
                stop_recorded_server(record, shared.run_id, lost=shared.lost())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stop_recorded_server(record: dict[str, Any], run_id: str, *, lost: bool = False) -> None:
    """Drop every database of the run on the recorded server, then stop it (keep a cached one).

    ``lost``: a process of the run found the server lost. The kit's own server is then
    stopped without a try at the drops, and a configured one gets them only if it answers
    one probe: a hung server would have the drops wait out the connect timeout, then the
    probe, for nothing.
    """
    # Imported here: the controller, which runs this, need not load psycopg and SQLAlchemy
    # before it starts the workers.
    from sqlalchemy.engine import make_url

    from .._core.errors import DatabaseError
    from .._postgres.server import server_answers_at
    from .owned import drop_run_databases

    admin_url = make_url(record["admin_url"])
    state_dir, bin_dir = record.get("state_dir"), record.get("bin_dir")
    try:
        # Nothing is left behind when the drops are skipped: the kit's own server's folder
        # is deleted (a cached cluster's next run drops what this run left in it), and a
        # configured server's next run drops them (this run's lock is gone).
        if not lost or (not isinstance(state_dir, str) and server_answers_at(admin_url)):
            try:
                drop_run_databases(admin_url, run_id)
            except DatabaseError:
                # A server that died mid-run (and no worker found it): nothing to drop
                # them on.
                if server_answers_at(admin_url):
                    raise
    finally:
        if isinstance(state_dir, str):
            recorded_bin = Path(bin_dir) if isinstance(bin_dir, str) else None
            socket_dir = record.get("socket_dir")
            socket = Path(socket_dir) if isinstance(socket_dir, str) else None
            stop_cluster(Path(state_dir), recorded_bin, socket, keep=bool(record.get("keep")))
