"""A cluster kept between runs with its template ready, so a warm start skips initdb and the schema.

Per project (one pytest cache folder), in the kit's base folder:

``cache-<id>/`` (id: a digest of the pytest cache folder's path)
    ``lock``: held (flock) by the run using the cluster, from configure to unconfigure; a
    second concurrent run finds it taken and uses a throwaway cluster instead of waiting.
    ``cache.json``: the marker: the binaries, version and password of the cluster, and the
    key of the schema its template holds, set only after that template was built.
    ``cluster/``: the state folder (data, log, socket; the server user's as root).
    ``project.json``: the pytest cache folder it serves. A cache folder whose pytest cache
    folder is gone (the project was deleted, or its ``.pytest_cache``) would be rebuilt from
    scratch by its next run, if any: the next run of any project deletes it.

pytest's cache (``config.cache``, key ``CACHE_KEY``) holds the pointer to that folder: a run
without it (the first, or after ``--cache-clear``) rebuilds the cluster from scratch. The data
lives in the kit's base folder, not in pytest's cache folder, because as root the server user
must reach it (a project under a 0700 home is out of its reach) and its socket path must be
short.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ._cluster import Cluster, LocalSource, shutdown
from ._state_folder import fixed_state_dir, prepare_base_dir, read_owner, recorded_socket_dir

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
TEMPLATE_RUN_ID = "cached template"  # in the template's ownership comment


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
    handle = path.open("ab")
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
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    mode = 0o711 if as_root else 0o700  # as root the server user passes through to cluster/
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
    temporary.write_text(json.dumps(record))
    temporary.replace(path)


def _recorded_project(folder: Path) -> Path | None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        recorded = json.loads((folder / PROJECT_FILE).read_text()).get("pytest_cache_dir")
        if isinstance(recorded, str):
            return Path(recorded)
    return None


@dataclass(frozen=True)
class Marker:
    """``cache.json``: what the cluster is, and which schema its template holds (if any)."""

    bin_dir: str
    version_num: int
    password: str
    template_key: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "format": CACHE_FORMAT,
            "bin_dir": self.bin_dir,
            "version_num": self.version_num,
            "password": self.password,
            "template_key": self.template_key,
        }


class ClusterCache:
    """A locked cache folder: start its cluster (rebuilt when unfit), and track its template."""

    def __init__(self, folder: Path, *, rebuild: bool) -> None:
        self.folder = folder
        self.rebuild = rebuild  # no pointer in pytest's cache: start from scratch
        self.reused_cluster = False  # for reports and tests: initdb was skipped
        self._marker: Marker | None = None

    @property
    def cluster_dir(self) -> Path:
        return self.folder / CLUSTER_FOLDER

    @property
    def marker_file(self) -> Path:
        return self.folder / MARKER_FILE

    def start_cluster(
        self,
        source: LocalSource,
        bin_dir: Path,
        version_num: int,
        user: str | None,
        tcp: bool,
        settings: dict[str, str],
        owner_pid: int | None = None,
    ) -> Cluster:
        """The cached cluster, started; initdb'd anew when missing, foreign or half-made."""
        marker = None if self.rebuild else self._read_marker()
        fits = (
            marker is not None
            and marker.bin_dir == str(bin_dir)
            and marker.version_num == version_num
            and (self.cluster_dir / "data" / "PG_VERSION").is_file()
        )
        if marker is not None and fits:
            cluster = self._cluster(source, bin_dir, user, marker.password, tcp, settings)
            # A killed run may have left its server running: stop it before starting anew.
            shutdown(cluster.data_dir, bin_dir, modes=("fast", "immediate"))
            cluster.log_file.unlink(missing_ok=True)
            cluster.socket_dir = fixed_state_dir(self.cluster_dir, bin_dir, user, owner_pid)
            try:
                cluster.start()
            except Exception:
                cluster.stop()
            else:
                self._marker = marker
                self.reused_cluster = True
                return cluster
        return self._initdb(source, bin_dir, version_num, user, tcp, settings, owner_pid)

    def _initdb(
        self,
        source: LocalSource,
        bin_dir: Path,
        version_num: int,
        user: str | None,
        tcp: bool,
        settings: dict[str, str],
        owner_pid: int | None,
    ) -> Cluster:
        self.wipe()
        password = secrets.token_hex(16)
        cluster = self._cluster(source, bin_dir, user, password, tcp, settings)
        try:
            cluster.socket_dir = fixed_state_dir(self.cluster_dir, bin_dir, user, owner_pid)
            cluster.init(version_num)
            # Written only once initdb succeeded: a folder without it is half-made.
            self._write_marker(Marker(str(bin_dir), version_num, password, None))
            cluster.start()
        except BaseException:
            cluster.stop()
            self.wipe()
            raise
        self.reused_cluster = False
        return cluster

    def _cluster(
        self,
        source: LocalSource,
        bin_dir: Path,
        user: str | None,
        password: str,
        tcp: bool,
        settings: dict[str, str],
    ) -> Cluster:
        socket_dir = self.cluster_dir / "s"
        return Cluster(source, bin_dir, self.cluster_dir, socket_dir, user, password, tcp, settings)

    def wipe(self) -> None:
        """Stop the cluster if it runs and delete it with its marker (the lock stays)."""
        self.marker_file.unlink(missing_ok=True)
        self._marker = None
        data_dir = self.cluster_dir / "data"
        if (data_dir / "postmaster.pid").exists():
            bin_dir = _recorded_bin_dir(self.cluster_dir)
            shutdown(data_dir, bin_dir, modes=("immediate",))
        owner = read_owner(self.cluster_dir)
        shutil.rmtree(self.cluster_dir, ignore_errors=True)
        outside = recorded_socket_dir(owner)
        if outside is not None:
            shutil.rmtree(outside, ignore_errors=True)

    def template_ready(self, key: str) -> bool:
        """Whether the template was built, completely, for the schema with this key."""
        return self._marker is not None and self._marker.template_key == key

    def set_template(self, key: str | None) -> None:
        """Record the template's schema key (None before a rebuild starts: never half-marked)."""
        if self._marker is None:
            return
        marker = Marker(self._marker.bin_dir, self._marker.version_num, self._marker.password, key)
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
        if not (
            isinstance(bin_dir, str)
            and isinstance(version_num, int)
            and isinstance(password, str)
            and (key is None or isinstance(key, str))
        ):
            return None
        return Marker(bin_dir, version_num, password, key)

    def _write_marker(self, marker: Marker) -> None:
        temporary = self.folder / f".{MARKER_FILE}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(marker.as_json(), handle)
        temporary.replace(self.marker_file)  # readers never see half a marker
        self._marker = marker


def template_key(fingerprint: str, version_num: int) -> str:
    """The key of a template: the kit's format, the server version and the schema's digest."""
    text = json.dumps([CACHE_FORMAT, version_num, fingerprint])
    return hashlib.sha256(text.encode()).hexdigest()


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
        ClusterCache(old, rebuild=True).wipe()
        shutil.rmtree(old, ignore_errors=True)
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
        if not (data_dir / "postmaster.pid").exists():
            continue
        with contextlib.suppress(OSError), _held(folder) as held:
            if held:
                shutdown(data_dir, _recorded_bin_dir(folder / CLUSTER_FOLDER), modes=("fast",))
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
