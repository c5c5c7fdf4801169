"""The installation the kit's own cluster runs on, and the cached cluster's start ahead.

``local_install`` is the first half of starting a local cluster (``server.start_server``
does the rest): which binaries, their version (kept between runs by ``install_memo``), the
user the server runs as. Like every module it imports, it loads neither SQLAlchemy nor
psycopg, so that ``start_cached_ahead`` can launch the cached cluster's server before they
are imported, and the server starts while they are.
"""

from __future__ import annotations

from pathlib import Path

from .binaries import binaries_version, check_server_version, find_binaries
from .cache import ClusterCache, stop_abandoned
from .cluster import LocalInstall, LocalSource
from .install_memo import InstallMemo
from .orphans import cleanup_orphans
from .state_folder import prepare_base_dir
from .sysuser import open_install_tree, server_user


def local_base_dir(base_dir: Path | None) -> Path:
    """The folder of the kit's clusters, made if needed, with what dead runs left there
    stopped (and the throwaway clusters among it deleted)."""
    base = prepare_base_dir(base_dir)
    cleanup_orphans(base)
    stop_abandoned(base)  # cached servers of killed runs; their clusters are kept
    return base


def local_install(base: Path, prefer: LocalSource | None) -> LocalInstall:
    """The binaries to run a local cluster on (see ``binaries.find_binaries``), checked.

    Raises ``DatabaseError`` when there are none, or when they are older than PostgreSQL 13.
    """
    source, bin_dir = find_binaries(prefer)
    memo = InstallMemo(base, bin_dir)
    version_num = memo.version_num
    if version_num is None:
        version_num = binaries_version(bin_dir)
        memo.remember(version_num=version_num)
    check_server_version(version_num, f"The binaries in {bin_dir}")
    user = server_user()
    if user is not None and source == "embedded" and not memo.opened:
        open_install_tree(bin_dir.parent)
        memo.remember(opened=True)
    return LocalInstall(source, bin_dir, version_num, user)


def start_cached_ahead(cache: ClusterCache, *, tcp: bool, base_dir: Path | None = None) -> None:
    """Launch the server of ``cache``'s cluster without waiting for it, when its marker says
    it can be reused: ``server.start_server(None, tcp=tcp, base_dir=base_dir, cache=cache)``
    then waits for it instead of starting it. What goes wrong here is left for that call,
    which finds it again and reports it (or rebuilds the cluster); a run that never makes
    that call stops the server with ``cache.abandon_ahead()``."""
    try:
        base = local_base_dir(base_dir)
        install = local_install(base, None)
    except Exception:  # reported by start_server, which repeats these steps
        return
    cache.start_ahead(install, tcp, {}, None)
