"""A cluster kept between runs with its template ready, so a warm start skips initdb and the schema.

Per project (one pytest cache folder), in the kit's base folder:

``cache-<id>/`` (id: a digest of the pytest cache folder's path)
    ``lock``: held (flock) by the run using the cluster, from configure to unconfigure; a
    second concurrent run finds it taken and uses a throwaway cluster instead of waiting.
    ``cache.json``: the marker: the binaries, version and password of the cluster, and the
    key of the schema its template holds, set only after that template was built; what the
    template held then, and a digest of its files as the last check that read them found them
    (``files_digest``).
    ``cluster/``: the state folder (data, log, socket; the server user's as root).
    ``project.json``: the pytest cache folder it serves. A cache folder whose pytest cache
    folder is gone (the project was deleted, or its ``.pytest_cache``) would be rebuilt from
    scratch by its next run, if any: the next run of any project deletes it.

pytest's cache (``config.cache``, key ``CACHE_KEY``) holds the pointer to that folder: a run
without it (the first, or after ``--cache-clear``) rebuilds the cluster from scratch. The data
lives in the kit's base folder, not in pytest's cache folder, because as root the server user
must reach it (a project under a 0700 home is out of its reach) and its socket path must be
short.

Whatever is found in a cache folder, a run either uses what it has verified or rebuilds it:
anything in the way (a file where a folder belongs, a folder where a file does) is deleted, a
cluster that does not start or answer is made anew, a template whose tables no longer hold
what they held when it was built is rebuilt (``ClusterCache.check_databases`` runs the check
that ``_provisioning.template_check`` gives it: this module knows folders and markers, not what
a database holds), and only a folder the kit cannot even delete makes the run use a throwaway
cluster, with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .._core.warnings import TestkitWarning
from .cluster import Cluster, LocalInstall, shutdown
from .state_folder import (
    fixed_state_dir,
    open_private,
    prepare_base_dir,
    read_owner,
    recorded_socket_dir,
    write_private_text,
)
from .sysuser import as_root

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

try:
    import fcntl
except ImportError:  # not POSIX: no cache, a throwaway cluster per run as before
    fcntl = None  # type: ignore[assignment]

CACHE_FORMAT = 1  # bump when the layout or the template's contents change meaning
CACHE_KEY = "anyio_fastapi_testkit/cluster"
FOLDER_PREFIX = "cache-"
MARKER_FILE = "cache.json"
LOCK_FILE = "lock"
PROJECT_FILE = "project.json"
CLUSTER_FOLDER = "cluster"
_KEPT = (LOCK_FILE, PROJECT_FILE)  # what a wipe leaves in the cache folder


# Checks the template of a reused cluster against the marker, before the run uses it: given
# by the provisioning layer (``_provisioning.template_check.check_cached_template``).
TemplateCheck = Callable[["ClusterCache", "URL"], None]


class CacheWarning(TestkitWarning):
    """The cached cluster could not be used or rebuilt: the run used a throwaway cluster."""


class CacheStore:
    """What the kit needs of pytest's ``config.cache``: ``get`` and ``set`` of JSON values."""

    def __init__(self, pytest_cache: Any) -> None:
        self._cache = pytest_cache

    def pointer(self) -> object:
        return self._cache.get(CACHE_KEY, None)

    def set_pointer(self, folder: Path) -> None:
        self._cache.set(CACHE_KEY, self.expected_pointer(folder))

    @staticmethod
    def expected_pointer(folder: Path) -> dict[str, object]:
        return {"format": CACHE_FORMAT, "folder": str(folder)}


@dataclass
class CacheLock:
    """The lock on a cache folder, held while a run uses it."""

    folder: Path
    handle: IO[bytes] | None

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file releases the flock
            self.handle = None


def cache_folder(base: Path, pytest_cache_dir: Path) -> Path:
    """The cache folder of the project whose pytest cache folder is ``pytest_cache_dir``."""
    digest = hashlib.sha256(str(pytest_cache_dir.resolve()).encode()).hexdigest()[:16]
    return base / f"{FOLDER_PREFIX}{digest}"


def try_lock(folder: Path) -> CacheLock | None:
    """Take the folder's lock without waiting; None when another run holds it."""
    if fcntl is None:
        return None
    path = folder / LOCK_FILE
    if not _is_plain(path, stat.S_ISREG):
        remove_path(path)  # a folder or link there: nobody can hold a lock on it
    handle = os.fdopen(open_private(path, os.O_WRONLY | os.O_APPEND), "ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Another project's run may have deleted this folder (remove_forgotten) between the
        # open and the lock, and a run may have made it anew since: a lock on a file that is
        # no longer the folder's guards nothing.
        held = os.path.samestat(os.fstat(handle.fileno()), path.stat())
    except OSError:  # locked by another run, or the folder is gone
        held = False
    if not held:
        handle.close()
        return None
    return CacheLock(folder, handle)


def make_cache_folder(base_dir: Path | None, pytest_cache_dir: Path) -> Path:
    """Create (if missing) the project's cache folder in the kit's base folder."""
    base = prepare_base_dir(base_dir)
    folder = cache_folder(base, pytest_cache_dir)
    mode = 0o711 if as_root() else 0o700  # as root the server user passes through to cluster/
    if not _is_plain(folder, stat.S_ISDIR):
        remove_path(folder)  # a file or a link in the kit's own base folder: in the way
    folder.mkdir(mode=mode, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OSError(f"{folder} is not a folder of this user")
    folder.chmod(mode)
    _record_project(folder, pytest_cache_dir)
    return folder


def _record_project(folder: Path, pytest_cache_dir: Path) -> None:
    record = {"pytest_cache_dir": str(pytest_cache_dir.resolve())}
    path = folder / PROJECT_FILE
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()) == record:
            return
    temporary = folder / f".{PROJECT_FILE}.tmp"
    for stale in (temporary, path):
        if not _is_plain(stale, stat.S_ISREG):
            remove_path(stale)  # e.g. a folder where the file belongs
    write_private_text(path, json.dumps(record))


def _recorded_project(folder: Path) -> Path | None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        recorded = json.loads((folder / PROJECT_FILE).read_text()).get("pytest_cache_dir")
        if isinstance(recorded, str):
            return Path(recorded)
    return None


def remove_path(path: Path) -> None:
    """Delete whatever is at ``path`` (file, link, folder tree; links are not followed).

    Folders the current user cannot write or search are opened up first. Raises ``OSError``
    when something is left (e.g. a read-only file system).
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        path.unlink()
        return
    shutil.rmtree(path, ignore_errors=True)
    if not path.exists() and not path.is_symlink():
        return
    with contextlib.suppress(OSError):
        path.chmod(0o700)
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                Path(root, name).chmod(0o700)  # before os.walk lists it
    shutil.rmtree(path)


def _is_plain(path: Path, kind: Callable[[int], bool]) -> bool:
    """Whether ``path`` is missing, or there and of this kind (``stat.S_ISDIR``, ...), no link."""
    try:
        return kind(path.lstat().st_mode)
    except FileNotFoundError:
        return True


@dataclass(frozen=True)
class Marker:
    """``cache.json``: what the cluster is, and which schema its template holds (if any).

    ``template_name`` and ``template_check`` (see ``_provisioning.owned.database_summary``) are
    what the template held when it was built, for the check of the next run. ``template_oid``
    and ``template_files`` (see ``files_digest``): the template's folder in the data folder as
    a run found it before its server started, when its check then found the template whole.
    """

    bin_dir: str
    version_num: int
    password: str
    template_key: str | None
    template_name: str | None = None
    template_check: dict[str, Any] | None = None
    template_oid: int | None = None
    template_files: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "format": CACHE_FORMAT,
            "bin_dir": self.bin_dir,
            "version_num": self.version_num,
            "password": self.password,
            "template_key": self.template_key,
            "template_name": self.template_name,
            "template_check": self.template_check,
            "template_oid": self.template_oid,
            "template_files": self.template_files,
        }


@dataclass(frozen=True)
class _StartedAhead:
    """A start of the cached cluster launched by ``ClusterCache.start_ahead``."""

    arguments: tuple[object, ...]  # those of start_ahead, which start_cluster must repeat
    cluster: Cluster  # launched: stopping it lets its pg_ctl finish first


class ClusterCache:
    """A locked cache folder: start its cluster (rebuilt when unfit), and track its template.

    ``check_template`` checks a reused cluster's template against the marker (see
    ``check_databases``).
    """

    def __init__(self, folder: Path, *, rebuild: bool, check_template: TemplateCheck) -> None:
        self.folder = folder
        self.rebuild = rebuild  # no pointer in pytest's cache: start from scratch
        self.reused_cluster = False  # for reports and tests: initdb was skipped
        self.admin_url: URL | None = None  # of the started cluster, for the template's check
        self.dropped: list[str] = []  # for reports and tests: what check_databases dropped
        # What check_databases found whole and kept (the template, its spares), and nothing
        # else is left in the cluster; None: no check ran.
        self.checked: frozenset[str] | None = None
        self._marker: Marker | None = None
        self._check_template = check_template
        self._ahead: _StartedAhead | None = None
        # The template's folder before this start (its oid, files_digest): None when the
        # marker names none, or the server before it may not have ended cleanly.
        self._files_at_start: tuple[int, str] | None = None

    @property
    def cluster_dir(self) -> Path:
        return self.folder / CLUSTER_FOLDER

    @property
    def marker_file(self) -> Path:
        return self.folder / MARKER_FILE

    def start_ahead(
        self, install: LocalInstall, tcp: bool, settings: dict[str, str], owner_pid: int | None
    ) -> None:
        """Launch the cached cluster's server, if the marker says it can be reused, and return
        without waiting: ``start_cluster`` (same arguments) waits for it, so that the caller
        does other work (imports) while the server starts. Anything amiss is left for
        ``start_cluster``, which starts or rebuilds the cluster as it always does; until then,
        ``abandon_ahead`` stops what was launched."""
        if self._ahead is not None:
            return
        marker = self._reusable_marker(install)
        if marker is None:
            return  # start_cluster makes it anew
        cluster = None
        try:
            cluster = self._stopped_cluster(marker, install, tcp, settings, owner_pid)
            if cluster is not None:
                arguments = (install, tcp, dict(settings), owner_pid)
                # Recorded first: abandon_ahead stops it also after an interrupt in the launch.
                self._ahead = _StartedAhead(arguments, cluster)
                cluster.launch()
        except Exception:  # the same again in start_cluster, which handles it
            self._ahead = None
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.stop()

    def abandon_ahead(self) -> None:
        """Stop the server ``start_ahead`` launched, if ``start_cluster`` did not take it."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.cluster.stop()  # lets its pg_ctl finish first

    def start_cluster(
        self,
        install: LocalInstall,
        tcp: bool,
        settings: dict[str, str],
        owner_pid: int | None = None,
    ) -> Cluster:
        """The cached cluster, started; initdb'd anew when missing, foreign, half-made or
        damaged in any way that keeps it from starting. Raises ``OSError`` only when the
        folder cannot be cleared for a new one."""
        ahead, self._ahead = self._ahead, None
        marker = self._reusable_marker(install)
        if ahead is not None and (
            marker is None or ahead.arguments != (install, tcp, dict(settings), owner_pid)
        ):
            ahead.cluster.stop()
            ahead = None
        if marker is not None:
            cluster = self._reuse(marker, install, tcp, settings, owner_pid, ahead)
            if cluster is not None:
                return cluster
        return self._initdb(install, tcp, settings, owner_pid)

    def _reusable_marker(self, install: LocalInstall) -> Marker | None:
        """The marker, if it describes a cluster of these binaries (unless rebuilding)."""
        marker = None if self.rebuild else self._read_marker()
        if marker is None or (marker.bin_dir, marker.version_num) != (
            str(install.bin_dir),
            install.version_num,
        ):
            return None
        return marker

    def _reuse(
        self,
        marker: Marker,
        install: LocalInstall,
        tcp: bool,
        settings: dict[str, str],
        owner_pid: int | None,
        ahead: _StartedAhead | None,
    ) -> Cluster | None:
        """Start the cluster as the marker describes it (or wait for the start launched
        ahead); None when it does not start."""
        cluster = ahead.cluster if ahead is not None else None
        try:
            if cluster is not None:  # launched by start_ahead
                cluster.await_start()
            else:
                cluster = self._stopped_cluster(marker, install, tcp, settings, owner_pid)
                if cluster is None:
                    return None
                cluster.start()
        except Exception:  # whatever is wrong in the folder: make the cluster anew
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.stop()
            return None
        self._marker = marker
        self.reused_cluster = True
        return cluster

    def _stopped_cluster(
        self,
        marker: Marker,
        install: LocalInstall,
        tcp: bool,
        settings: dict[str, str],
        owner_pid: int | None,
    ) -> Cluster | None:
        """The cluster as the marker describes it, ready to start (no server left running in
        its folder); None when its folder does not hold one."""
        data_dir = self.cluster_dir / "data"
        if not (
            _is_plain(self.cluster_dir, stat.S_ISDIR)
            and self.cluster_dir.is_dir()
            and _is_plain(data_dir, stat.S_ISDIR)
            and (data_dir / "PG_VERSION").is_file()
        ):
            return None
        cluster = self._cluster(install, marker.password, tcp, settings)
        # A killed run may have left its server running: stop it before starting anew.
        clean = shutdown(cluster.data_dir, install.bin_dir, modes=("fast", "immediate"))
        self._note_template_files(marker, cluster, clean)
        remove_path(cluster.log_file)
        cluster.socket_dir = fixed_state_dir(
            self.cluster_dir, install.bin_dir, install.user, owner_pid
        )
        return cluster

    def _note_template_files(self, marker: Marker, cluster: Cluster, clean: bool) -> None:
        """Before the server starts: the template's files as found, for ``unchanged_template``,
        unless the server before may not have ended cleanly (``clean``: as ``shutdown`` saw
        it; its log must end with a clean shutdown too), which could leave WAL to replay."""
        self._files_at_start = None
        oid = marker.template_oid
        if clean and oid is not None and _shut_down_cleanly(cluster.log_file):
            digest = files_digest(cluster.data_dir / "base" / str(oid))
            if digest is not None:
                self._files_at_start = (oid, digest)

    def _initdb(
        self,
        install: LocalInstall,
        tcp: bool,
        settings: dict[str, str],
        owner_pid: int | None,
    ) -> Cluster:
        self.wipe()
        password = secrets.token_hex(16)
        cluster = self._cluster(install, password, tcp, settings)
        try:
            cluster.socket_dir = fixed_state_dir(
                self.cluster_dir, install.bin_dir, install.user, owner_pid
            )
            cluster.init(install.version_num)
            # Written only once initdb succeeded: a folder without it is half-made.
            self._write_marker(Marker(str(install.bin_dir), install.version_num, password, None))
            cluster.start()
        except BaseException:
            cluster.stop()
            with contextlib.suppress(OSError):  # the first error is the one to report
                self.wipe()
            raise
        self.reused_cluster = False
        return cluster

    def _cluster(
        self, install: LocalInstall, password: str, tcp: bool, settings: dict[str, str]
    ) -> Cluster:
        socket_dir = self.cluster_dir / "s"
        return Cluster(
            install.source,
            install.bin_dir,
            self.cluster_dir,
            socket_dir,
            install.user,
            password,
            tcp,
            settings,
        )

    def wipe(self) -> None:
        """Stop the cluster if it runs and delete everything of it (the lock and the project
        record stay). Raises ``OSError`` when something cannot be deleted."""
        self._marker = None
        wipe_folder(self.folder)

    def check_databases(self, admin_url: URL) -> None:
        """On a reused cluster, before the run uses it: check its template against the marker
        (``check_template``), which keeps it only if it still holds what it held when it was
        built, and drops every other database.

        Raises ``DatabaseError`` when that fails: the caller makes the cluster anew.
        """
        self.admin_url = admin_url
        if self._marker is not None:
            self._check_template(self, admin_url)

    @property
    def marker(self) -> Marker | None:
        """What ``cache.json`` says of the cluster and its template (None: nothing yet)."""
        return self._marker

    def unchanged_template(self) -> int | None:
        """The oid of the template, if its folder is as it was before the start of a run that
        then found it whole, and every server since ended cleanly: its files are those that
        check read. None: read it whole."""
        marker = self._marker
        if marker is None or marker.template_oid is None or marker.template_files is None:
            return None
        if self._files_at_start != (marker.template_oid, marker.template_files):
            return None
        return marker.template_oid

    def record_checked(self, oid: int) -> None:
        """Record that the check of this start found the template (of ``oid``) whole, with
        its folder as found before the start (when known): see ``unchanged_template``."""
        marker = self._marker
        if marker is None:
            return
        at_start = self._files_at_start
        files = at_start[1] if at_start is not None and at_start[0] == oid else None
        if (marker.template_oid, marker.template_files) != (oid, files):
            self._write_marker(dataclasses.replace(marker, template_oid=oid, template_files=files))

    def template_ready(self, key: str) -> bool:
        """Whether the template was built, completely, for the schema with this key."""
        return self._marker is not None and self._marker.template_key == key

    def set_template(
        self, key: str | None, name: str | None = None, check: dict[str, Any] | None = None
    ) -> None:
        """Record the template's schema key (None before a rebuild starts: never half-marked),
        with its name and what it holds (``check``) for the next run's check; without them
        (the template could not be read), the next run rebuilds it rather than trust it
        unchecked."""
        if self._marker is None:
            return
        if key is None:
            name, check = None, None
        marker = Marker(
            self._marker.bin_dir, self._marker.version_num, self._marker.password, key, name, check
        )
        self._write_marker(marker)

    def _read_marker(self) -> Marker | None:
        try:
            data = json.loads(self.marker_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            return None
        bin_dir, version_num = data.get("bin_dir"), data.get("version_num")
        password, key = data.get("password"), data.get("template_key")
        name, check = data.get("template_name"), data.get("template_check")
        if not (
            isinstance(bin_dir, str)
            and isinstance(version_num, int)
            and isinstance(password, str)
            and (key is None or isinstance(key, str))
        ):
            return None
        if not (isinstance(name, str) and isinstance(check, dict)):
            name, check = None, None  # nothing to check the template against: rebuilt
        oid, files = data.get("template_oid"), data.get("template_files")
        if not isinstance(oid, int) or isinstance(oid, bool):
            oid = None
        if oid is None or not isinstance(files, str):
            files = None  # nothing known of its files: read it whole
        return Marker(bin_dir, version_num, password, key, name, check, oid, files)

    def _write_marker(self, marker: Marker) -> None:
        temporary = self.folder / f".{MARKER_FILE}.tmp"
        for path in (temporary, self.marker_file):
            if not _is_plain(path, stat.S_ISREG):
                remove_path(path)  # e.g. a folder where the file belongs
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(marker.as_json(), handle)
        temporary.replace(self.marker_file)  # readers never see half a marker
        self._marker = marker


# A cache of the catalogs that the server deletes at every start and writes again at the
# first connection to the database: never read as found, so never part of a digest.
_RELCACHE_INIT = "pg_internal.init"


def files_digest(folder: Path) -> str | None:
    """A digest of the names, kinds, sizes, inodes and modification times (ns) of the files in
    ``folder`` (a database's folder in the data folder, ``base/<oid>``, where PostgreSQL keeps
    every file of that database); None when it cannot be read. Reading a database's tables
    through a server costs a connection and a read of each; listing its folder, a
    millisecond."""
    digest = hashlib.sha256()
    try:
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda found: found.name):
                if entry.name == _RELCACHE_INIT:
                    continue
                info = entry.stat(follow_symlinks=False)
                line = f"{entry.name}\0{info.st_mode}\0{info.st_size}\0{info.st_ino}"
                digest.update(f"{line}\0{info.st_mtime_ns}\n".encode())
    except OSError:
        return None
    return digest.hexdigest()


# The last line a server logs once it has shut down cleanly (lc_messages is C: see initdb's
# --locale in cluster.py).
_SHUT_DOWN = b"database system is shut down"


def _shut_down_cleanly(log_file: Path) -> bool:
    """Whether the server log ends as a clean shutdown's does (not a crash's)."""
    try:
        with log_file.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 512))
            tail = log.read().rstrip().splitlines()
    except OSError:
        return False
    return bool(tail) and tail[-1].endswith(_SHUT_DOWN)


def template_key(fingerprint: str, version_num: int) -> str:
    """The key of a template: the kit's format, the server version and the schema's digest."""
    text = json.dumps([CACHE_FORMAT, version_num, fingerprint])
    return hashlib.sha256(text.encode()).hexdigest()


def wipe_folder(folder: Path) -> None:
    """Stop the cache folder's cluster if it runs and delete everything of it (the lock and
    the project record stay). Raises ``OSError`` when something cannot be deleted."""
    cluster_dir = folder / CLUSTER_FOLDER
    data_dir = cluster_dir / "data"
    with contextlib.suppress(OSError):
        if _is_plain(cluster_dir, stat.S_ISDIR) and _is_plain(data_dir, stat.S_ISDIR):
            shutdown(data_dir, _recorded_bin_dir(cluster_dir), modes=("immediate",))
    owner = read_owner(cluster_dir) if _is_plain(cluster_dir, stat.S_ISDIR) else None
    for path in sorted(folder.iterdir()):
        if path.name not in _KEPT:
            remove_path(path)
    outside = recorded_socket_dir(owner)
    if outside is not None:
        shutil.rmtree(outside, ignore_errors=True)


def _recorded_bin_dir(cluster_dir: Path) -> Path | None:
    # From the marker, which the kit wrote (owner.json is the server user's to rewrite).
    with contextlib.suppress(OSError, ValueError, AttributeError):
        recorded = json.loads((cluster_dir.parent / MARKER_FILE).read_text()).get("bin_dir")
        if isinstance(recorded, str):
            return Path(recorded)
    return None


def remove_replaced(pointer: object, folder: Path) -> bool:
    """Delete the cache folder an old pointer names instead of ``folder`` (the project moved,
    or its cache_dir changed), if it is a kit's cache folder beside it that no run holds."""
    recorded = pointer.get("folder") if isinstance(pointer, dict) else None
    if not isinstance(recorded, str):
        return False
    old = Path(recorded)
    if old == folder or old.parent != folder.parent or not old.name.startswith(FOLDER_PREFIX):
        return False
    return _remove_unheld(old)


def remove_forgotten(folder: Path) -> list[Path]:
    """Delete the kit's cache folders beside ``folder`` whose pytest cache folder is gone (the
    project, or its ``.pytest_cache``, was deleted) and that no run holds. Their next run, if
    any, would rebuild them from scratch. Returns the folders deleted.

    Folders from before the kit recorded their project are kept: nothing says they are unused.
    """
    removed = []
    for other in sorted(folder.parent.glob(f"{FOLDER_PREFIX}*")):
        if other == folder:
            continue
        project = _recorded_project(other)
        if project is None or project.exists():
            continue
        with contextlib.suppress(OSError):
            if _remove_unheld(other):
                removed.append(other)
    return removed


def _remove_unheld(old: Path) -> bool:
    """Delete the cache folder ``old`` with its cluster, unless a run holds it."""
    if old.is_symlink() or not (old / LOCK_FILE).is_file():
        return False
    lock = try_lock(old)
    if lock is None:
        return False
    try:
        wipe_folder(old)
        shutil.rmtree(old, ignore_errors=True)
    except OSError:  # another project's folder the kit cannot delete: not this run's failure
        return False
    finally:
        lock.release()
    return True


def stop_abandoned(base_dir: Path) -> list[Path]:
    """Stop the cached servers in ``base_dir`` that no run holds (their run was killed).

    The clusters themselves are kept for the next run of their project. Returns the folders
    whose server was stopped.
    """
    stopped = []
    for folder in sorted(base_dir.glob(f"{FOLDER_PREFIX}*")):
        data_dir = folder / CLUSTER_FOLDER / "data"
        # One folder the kit cannot inspect (damaged, unreadable) must not stop this run.
        with contextlib.suppress(OSError):
            if not (data_dir / "postmaster.pid").exists():
                continue
            with _held(folder) as held:
                if held:
                    bin_dir = _recorded_bin_dir(folder / CLUSTER_FOLDER)
                    shutdown(data_dir, bin_dir, modes=("fast",))
                    stopped.append(folder)
    return stopped


@contextlib.contextmanager
def _held(folder: Path) -> Iterator[bool]:
    lock = try_lock(folder) if (folder / LOCK_FILE).exists() else None
    try:
        yield lock is not None
    finally:
        if lock is not None:
            lock.release()
