"""Scaffolding shared by several test modules: the cached-cluster project, the Alembic files,
the unreachable server, and the items app on the test's transaction.

``conftest.py`` holds the sub-session basics (``Project``, the apps, ``leftovers``); this module
holds what only a few modules need, so that each is written once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import (
    ITEMS_APP,
    SUBSESSION_TIMEOUT,
    Project,
    assert_nothing_left,
    postgres_processes_under,
    sql_rows,
    wait_for_server_end,
)

from anyio_fastapi_testkit._postgres.cache import (
    CACHE_KEY,
    CLUSTER_FOLDER,
    FOLDER_PREFIX,
    LOCK_FILE,
    MARKER_FILE,
    CacheStore,
    CacheWarning,
    ClusterCache,
    cache_folder,
    make_cache_folder,
    remove_path,
    stop_abandoned,
    try_lock,
    wipe_folder,
)
from anyio_fastapi_testkit._postgres.server import RunningServer, start_server
from anyio_fastapi_testkit._postgres.state_folder import prepare_base_dir
from anyio_fastapi_testkit._provisioning.template_check import check_cached_template

# --- a server that is not there ----------------------------------------------------------------

# Port 1: nothing listens there, so the driver's "Connection refused" comes at once.
UNREACHABLE_URL = "postgresql://u:s3cretpw@127.0.0.1:1/db"
UNREACHABLE_MASKED = "postgresql://u:***@127.0.0.1:1/db"
UNREACHABLE_PASSWORD = "s3cretpw"


def output_of(result: pytest.RunResult) -> str:
    """A sub-session's stdout and stderr as one text, for ``in`` checks."""
    return "\n".join([*result.outlines, *result.errlines])


# --- Alembic -----------------------------------------------------------------------------------

ALEMBIC_INI = """
[alembic]
script_location = %(here)s/migrations
prepend_sys_path = %(here)s
path_separator = os
"""

# A sync env.py taking the URL the kit sets in the config (it names no driver: psycopg here).
ALEMBIC_ENV = """
from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import make_url

url = make_url(context.config.get_main_option("sqlalchemy.url"))
engine = create_engine(url.set(drivername="postgresql+psycopg"), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""

# The items table of conftest.ITEMS_APP as one revision; ``then`` is more of upgrade()'s body.
_ITEMS_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
    )
{then}

def downgrade():
    op.drop_table("items")
"""


def items_revision(then: str = "") -> str:
    """The Alembic revision that makes the items table, then runs ``then`` (upgrade's body,
    indented by four spaces; it may use ``op`` and ``sa``)."""
    return _ITEMS_REVISION.format(then=then)


def write_alembic(
    root: Path, revisions: dict[str, str], *, env: str = ALEMBIC_ENV, ini: str = ALEMBIC_INI
) -> None:
    """``alembic.ini``, ``migrations/env.py`` and ``migrations/versions/<name>`` in ``root``."""
    (root / "alembic.ini").write_text(ini)
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "migrations" / "env.py").write_text(env)
    for name, text in revisions.items():
        (versions / name).write_text(text)


# --- the cached cluster ------------------------------------------------------------------------

# Each run of a cached project writes one record: the system identifier changes with every
# initdb, the template's oid with every rebuild of the template; the relation files let a test
# damage the template's files on disk. The second test fails where a template, a spare or a
# working database does not hold exactly the app's seed rows (SEEDS): a damaged one, or the
# rows of an earlier run.
RECORDING_TESTS = """
import json
import os
import time
from pathlib import Path

import psycopg
from sqlalchemy import select
from sqlalchemy.engine import make_url

import items_app
from items_app import Item

RELATIONS = ("items", "items_pkey", "items_name_key", "items_id_seq", "pg_class")
TEMPLATE = "test_app_template"


def rows(url, statement, database=None):
    target = url.set(database=database) if database else url
    with psycopg.connect(target.render_as_string(hide_password=False), autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def the_spare(url, within=None):
    # The kit clones the next run's spare in the background; a marked one is finished. With
    # no deadline (within) of its own, the sub-session's timeout bounds the wait.
    deadline = None if within is None else time.monotonic() + within
    while deadline is None or time.monotonic() < deadline:
        found = rows(url, "SELECT oid FROM pg_database WHERE datname LIKE 'test_spare_%' "
                          "AND shobj_description(oid, 'pg_database') IS NOT NULL")
        if found:
            return found[0][0]
        time.sleep(0.05)
    return None


def test_record_the_server(database_url):
    url = make_url(str(database_url)).set(drivername="postgresql")
    spare = None  # looked for before the names
    if os.environ.get("WAIT_FOR_SPARE"):
        spare = the_spare(url)
    elif os.environ.get("SPARE_WITHIN"):  # seconds to wait for one: None if none came
        spare = the_spare(url, float(os.environ["SPARE_WITHIN"]))
    template = rows(url, f"SELECT oid FROM pg_database WHERE datname = '{TEMPLATE}'")
    columns = rows(url, "SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = 'items' ORDER BY column_name")
    record = {
        "system": str(rows(url, "SELECT system_identifier FROM pg_control_system()")[0][0]),
        "template": template[0][0] if template else None,
        "working": rows(url, "SELECT oid FROM pg_database "
                             "WHERE datname = current_database()")[0][0],
        "database": url.database,
        "databases": [name for (name,) in rows(url, "SELECT datname FROM pg_database")],
        "data_directory": rows(url, "SHOW data_directory")[0][0],
        "columns": [name for (name,) in columns],
        "files": {
            name: rows(url, f"SELECT pg_relation_filenode('{name}')", TEMPLATE)[0][0]
            for name in (RELATIONS if template else ())
        },
        "spare": spare,
    }
    with Path("runs.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\\n")
    if os.environ.get("UNMARK"):  # as a run killed between CREATE DATABASE and COMMENT
        rows(url, f"COMMENT ON DATABASE {os.environ['UNMARK']} IS NULL")
    if os.environ.get("KILL_PYTEST") or os.environ.get("UNMARK"):
        os.kill(os.getpid(), 9)  # a run killed with its cached server running


async def test_only_the_seed_rows_are_there(db_session):
    names = list(await db_session.scalars(select(Item.name).order_by(Item.name)))
    assert names == getattr(items_app, "SEEDS", [])
    db_session.add(Item(name="pen"))
    await db_session.flush()
"""

TEMPLATE = "test_app_template"  # the cached template of the items app (its database test_app)

# The items app with two rows seeded in its template, so that a table file damaged to empty
# shows in the rows.
SEEDED_ITEMS_APP = (
    ITEMS_APP
    + """
from sqlalchemy import DDL, event

SEEDS = ["seed-a", "seed-b"]
event.listen(
    Item.__table__, "after_create", DDL("INSERT INTO items (name) VALUES ('seed-a'), ('seed-b')")
)
"""
)

# Plugin autoload off (it costs a second of CPU a run); the kit loads anyio's plugin itself.
# The ini is written here, not by Project.ini: it must name no other plugin's setting.
CACHED_RUN_ARGS = ("-p", "no:randomly", "-p", "anyio_fastapi_testkit.plugin", "-rw")
CACHED_RUN_ENV = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
CACHED_INI = """[pytest]
pythonpath = .
testkit_app = items_app:app
testkit_schema = items_app:Base.metadata
"""


@dataclass(frozen=True)
class PrebuiltCache:
    """A cached project's cache as its cold run left it: the cache folder, the run's record
    and the key of the template it built."""

    folder: Path
    record: dict[str, Any]
    schema_key: str


class PrebuiltCaches:
    """One cold run per app and process (``prebuilt_caches``): its cache is copied into each
    test's own project (``CachedProject.start_from``) instead of each test's cold run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, PrebuiltCache] = {}

    def get(self, app: str) -> PrebuiltCache:
        if app not in self._built:
            self._built[app] = self._build(app, self.root / f"t{len(self._built)}")
        return self._built[app]

    @staticmethod
    def _build(app: str, tmpdir: Path) -> PrebuiltCache:
        __tracebackhide__ = True
        project = tmpdir / "project"
        project.mkdir(parents=True)
        (project / "items_app.py").write_text(app)
        (project / "pytest.ini").write_text(CACHED_INI)
        (project / "test_recording.py").write_text(RECORDING_TESTS)
        env = {**os.environ, **CACHED_RUN_ENV, "TMPDIR": str(tmpdir), "WAIT_FOR_SPARE": "1"}
        env.pop("TESTKIT_DATABASE_URL", None)
        completed = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", *CACHED_RUN_ARGS],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=SUBSESSION_TIMEOUT,
            check=False,
            env=env,
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
        record: dict[str, Any] = json.loads((project / "runs.jsonl").read_text().splitlines()[-1])
        assert record["template"] is not None and record["spare"] is not None, record
        base = tmpdir / f"anyio-fastapi-testkit-{os.getuid()}"
        folders = sorted(base.glob(f"{FOLDER_PREFIX}*"))
        assert len(folders) == 1, folders
        pointer = json.loads((project / ".pytest_cache" / "v" / CACHE_KEY).read_text())
        assert pointer == CacheStore.expected_pointer(folders[0]), pointer
        key = json.loads((folders[0] / MARKER_FILE).read_text())["template_key"]
        assert key, "the cold run did not mark its template done"
        assert_nothing_left(tmpdir)
        return PrebuiltCache(folders[0], record, key)


@pytest.fixture(name="prebuilt_caches", scope="session")
def prebuilt_caches_fixture() -> Iterator[PrebuiltCaches]:
    """The cold runs of this process (see ``PrebuiltCaches``); all stopped and deleted at the
    end. A test module imports it as ``prebuilt_caches_fixture``."""
    root = Path(tempfile.mkdtemp(prefix="tkp-", dir="/tmp" if Path("/tmp").is_dir() else None))
    yield PrebuiltCaches(root)
    for base in root.glob(f"*/anyio-fastapi-testkit-{os.getuid()}"):
        with contextlib.suppress(Exception):
            stop_abandoned(base)
    for process in postgres_processes_under(root):
        with contextlib.suppress(psutil.Error):
            process.kill()
    shutil.rmtree(root, ignore_errors=True)


def identity(server: RunningServer) -> tuple[list[Any], list[Any]]:
    """The cluster's system identifier and the cached template's oid (as rows), read from a
    server just started on the cache; the server is stopped after."""
    try:
        url = server.info.admin_url
        system = sql_rows(url, "SELECT system_identifier FROM pg_control_system()")
        template = sql_rows(url, f"SELECT oid FROM pg_database WHERE datname = '{TEMPLATE}'")
    finally:
        server.stop()
    return system, template


class CachedProject:
    """A project run with pytest's cache provider on (where the cache's pointer lives), in a
    private TMPDIR (where the kit's base folder, with the cached cluster, lives)."""

    def __init__(self, project: Project, tmpdir: Path, *, app: str = ITEMS_APP) -> None:
        self.project = project
        self.tmpdir = tmpdir
        self.output = ""
        self.prebuilt: PrebuiltCache | None = None  # the copied cache (start_from)
        project.module("items_app", app)
        project.pytester.makefile(".ini", pytest=CACHED_INI)
        project.module("test_recording", RECORDING_TESTS)

    @property
    def path(self) -> Path:
        return self.project.pytester.path

    def sub_session(self, *args: str, **env: str) -> pytest.RunResult:
        """One sub-session in the project, with ``env`` set for it; its outcome unchecked."""
        with pytest.MonkeyPatch.context() as patch:
            for name, value in {**CACHED_RUN_ENV, **env}.items():
                patch.setenv(name, value)
            result = run_subsession(self.project.pytester, [*CACHED_RUN_ARGS, *args])
        self.output = output_of(result)
        if result.ret >= 0:  # not killed: its server was asked to stop, and ends on its own
            base = self.tmpdir / f"anyio-fastapi-testkit-{os.getuid()}"
            folder = cache_folder(base, self.path / ".pytest_cache")
            # Unless another run holds the cache (this one then used a throwaway cluster).
            lock = try_lock(folder) if (folder / LOCK_FILE).exists() else None
            if lock is not None:
                lock.release()
                wait_for_server_end(folder)
        return result

    def run(
        self,
        *args: str,
        cached: bool = True,
        warnings: int = 0,
        besides: Sequence[Path] = (),
        **env: str,
    ) -> dict[str, Any]:
        """A run that must pass, leave nothing running (but the servers of ``besides``, the
        cache folders of other runs), and use the cache (or not); its record."""
        __tracebackhide__ = True
        result = self.sub_session(*args, **env)
        assert "INTERNALERROR" not in self.output, self.output
        result.assert_outcomes(passed=2, warnings=warnings)
        assert_nothing_left(self.tmpdir, besides=besides)
        record = self.last_run()
        assert self.in_cache(record) == cached, (
            ("the cache was bypassed" if cached else "the cache was used") + "\n" + self.output
        )
        return record

    def killed_run(self, **env: str) -> dict[str, Any]:
        """A run whose recording test kills pytest (``KILL_PYTEST`` or ``UNMARK`` in ``env``)
        with its cached server running; its record."""
        __tracebackhide__ = True
        result = self.sub_session("-k", "record", **env)
        assert result.ret == -9, self.output  # killed, its server left running
        assert self.servers(), "killing pytest leaves its cached server running"
        return self.last_run()

    def last_run(self) -> dict[str, Any]:
        lines = (self.path / "runs.jsonl").read_text().splitlines()
        record: dict[str, Any] = json.loads(lines[-1])
        return record

    def in_cache(self, record: dict[str, Any]) -> bool:
        data_directory = Path(record["data_directory"])
        return any(data_directory.is_relative_to(folder) for folder in self.folders())

    def folders(self) -> list[Path]:
        base = self.tmpdir / f"anyio-fastapi-testkit-{os.getuid()}"
        return sorted(base.glob(f"{FOLDER_PREFIX}*"))

    def folder(self) -> Path:
        """The one cache folder."""
        folders = self.folders()
        assert len(folders) == 1, folders
        return folders[0]

    @property
    def cluster(self) -> Path:
        return self.folder() / "cluster"

    @property
    def data(self) -> Path:
        return self.cluster / "data"

    def servers(self) -> list[psutil.Process]:
        """The PostgreSQL processes running in the cache folder."""
        return postgres_processes_under(self.folder())

    def template_file(self, record: dict[str, Any], relation: str) -> Path:
        return self.data / "base" / str(record["template"]) / str(record["files"][relation])

    def marker(self) -> dict[str, Any]:
        marker: dict[str, Any] = json.loads((self.folder() / MARKER_FILE).read_text())
        return marker

    def edit_marker(self, **changes: object) -> None:
        (self.folder() / MARKER_FILE).write_text(json.dumps({**self.marker(), **changes}))

    def assert_reused_as_left(self, record: dict[str, Any]) -> None:
        """What the next run would decide, checked in this process with the kit's own
        functions on the real cluster (no Python start-up, no collection, no template
        build): the pointer names the folder, the lock is free, the cluster starts as it is
        (the system identifier of ``record``, the last run's) and its template passes the
        check and is kept (same oid, same key). Nothing is left running after."""
        __tracebackhide__ = True
        folder = self.folder()
        pointer = self.path / ".pytest_cache" / "v" / CACHE_KEY
        assert json.loads(pointer.read_text()) == CacheStore.expected_pointer(folder), (
            "the run left a pointer that makes the next run rebuild the cache"
        )
        key = self.marker()["template_key"]
        lock = try_lock(folder)
        assert lock is not None, "the run left the cache locked"
        try:
            cache = ClusterCache(folder, rebuild=False, check_template=check_cached_template)
            system, template = identity(start_server(None, base_dir=folder.parent, cache=cache))
        finally:
            lock.release()
        assert cache.reused_cluster, "the next run would make the cluster anew"
        assert str(system[0][0]) == record["system"], "the cluster is not the one the run used"
        assert key and cache.template_ready(key), "the next run would rebuild the template"
        assert template == [(record["template"],)], "the template is not the one the run left"
        assert_nothing_left(self.tmpdir)

    def start_from(self, prebuilt: PrebuiltCache) -> dict[str, Any]:
        """Give this project a private copy of ``prebuilt``'s cache, as its own cold run would
        have left it (the cluster, its template and spare, the marker, the pointer in pytest's
        cache, the run's record), for a test that does not test that cold run; its record.

        Copied as the kit laid it out, owners and modes kept (``cp -a``: as root the data is
        the server user's), to the folder the kit derives from this project's pytest cache
        folder, whose project record the kit's own ``make_cache_folder`` then rewrites.
        """
        __tracebackhide__ = True
        self.prebuilt = prebuilt
        pytest_cache = self.path / ".pytest_cache"
        base = prepare_base_dir(self.tmpdir / f"anyio-fastapi-testkit-{os.getuid()}")
        folder = cache_folder(base, pytest_cache)
        if folder.is_dir() and not folder.is_symlink():
            wipe_folder(folder)  # its server stopped, before the folder goes
        remove_path(folder)
        subprocess.run(["cp", "-a", str(prebuilt.folder), str(folder)], check=True)
        assert make_cache_folder(base, pytest_cache) == folder
        pointer = pytest_cache / "v" / CACHE_KEY
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(json.dumps(CacheStore.expected_pointer(folder)))
        data = folder / CLUSTER_FOLDER / "data"
        record = {**prebuilt.record, "data_directory": str(data)}
        with (self.path / "runs.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        return record

    def next_start(self) -> dict[str, Any]:
        """What the next run would make of the cache, decided in this process with the kit's
        own functions, as the plugin calls them (``xdist.plan_run``, then the server's start
        with its template check): the cache folder made fit, its lock taken, the cluster
        started (reused or made anew) and checked. Returns what the run would get: whether
        the cluster was reused, its system identifier, the template's oid (None: dropped or
        never built) and whether the template would be reused (else it is rebuilt). Nothing is
        left running after, and no CacheWarning is allowed (no throwaway cluster)."""
        __tracebackhide__ = True
        pytest_cache = self.path / ".pytest_cache"
        base = self.tmpdir / f"anyio-fastapi-testkit-{os.getuid()}"
        folder = make_cache_folder(base, pytest_cache)
        lock = try_lock(folder)
        assert lock is not None, "the cache was left locked"
        try:
            pointer = self.path / ".pytest_cache" / "v" / CACHE_KEY
            try:
                rebuild = json.loads(pointer.read_text()) != CacheStore.expected_pointer(folder)
            except (OSError, ValueError):
                rebuild = True
            cache = ClusterCache(folder, rebuild=rebuild, check_template=check_cached_template)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                server = start_server(None, base_dir=folder.parent, cache=cache)
            system, template = identity(server)
            fallbacks = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
            assert not fallbacks, fallbacks
        finally:
            lock.release()
        assert_nothing_left(self.tmpdir)
        return {
            "reused_cluster": cache.reused_cluster,
            "system": str(system[0][0]),
            "template": template[0][0] if template else None,
            "ready": self.prebuilt is not None and cache.template_ready(self.prebuilt.schema_key),
        }

    def run_elsewhere(self, path: Path) -> dict[str, Any]:
        """Run a copy of this project in ``path`` (outside pytester); its record."""
        completed = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", *CACHED_RUN_ARGS],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=SUBSESSION_TIMEOUT,
            check=False,
            env={**os.environ, **CACHED_RUN_ENV},
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
        record: dict[str, Any] = json.loads((path / "runs.jsonl").read_text().splitlines()[-1])
        return record

    @contextlib.contextmanager
    def holder(self, test_module: str) -> Iterator[subprocess.Popen[str]]:
        """A run of ``test_module``'s tests alone, in the background, until the block ends."""
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", *CACHED_RUN_ARGS, test_module],
            cwd=self.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **CACHED_RUN_ENV},
        )
        try:
            yield process
        finally:
            if process.poll() is None:  # the block failed before the run was let go
                process.kill()
                process.communicate()


def same_cluster(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["system"] == b["system"])


def same_template(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return same_cluster(a, b) and a["template"] == b["template"]


# A damage done to a cached project between runs, given the record of the run before; a tuple
# it returns is added to the next run's command line (anything else it returns is ignored).
Damage = Callable[[CachedProject, dict[str, Any]], object]

# What a damage must lead to in the next run. "initdb": a new cluster; "template": a new
# template (in the same cluster or a new one); "template only": a new template in the same
# cluster; "reused": repaired in place, cluster and template kept; "any": one of these.
EXPECTED = ("initdb", "template", "template only", "reused", "any")


def deal_in_turn(cached: CachedProject, damages: dict[str, tuple[Damage, str]]) -> None:
    """Each damage in turn to the one project, each followed by a run that must repair or
    rebuild as expected; what that run left must then be reused as it is. The project starts
    from its last run (a copy of a prebuilt cache: ``CachedProject.start_from``).

    That reuse is shown by the next damage's run where it must reuse (``"reused"``: its
    system identifier and template are those the run before left), and otherwise by
    ``CachedProject.assert_reused_as_left`` (the next run's decision, made in this process):
    a run each is what costs. So the next damage starts from what a repair left, as a cold
    or a warm run leaves it.
    """
    __tracebackhide__ = True
    whole = cached.last_run()
    proven_by: str | None = None  # the damage whose repair this run must show reusable
    cases = list(damages.items())
    for index, (name, (harm, expected)) in enumerate(cases):
        assert expected in EXPECTED, expected
        try:
            args = harm(cached, whole)
            after = cached.run(*(args if isinstance(args, tuple) else ()))
            if expected == "initdb":
                assert not same_cluster(after, whole), "a damaged cluster must be made anew"
            elif expected in ("template", "template only"):
                assert not same_template(after, whole), "the damaged template was reused"
                if expected == "template only":
                    assert same_cluster(after, whole), "a whole cluster was made anew"
            elif expected == "reused":
                assert same_template(after, whole), "the cache was rebuilt, not repaired"
            assert cached.marker()["template_key"], "the rebuilt template is not marked done"
            following = cases[index + 1][1][1] if index + 1 < len(cases) else None
            if following != "reused":
                cached.assert_reused_as_left(after)
            whole = after
        except BaseException as error:
            error.add_note(f"damage: {name}")
            if proven_by is not None:
                error.add_note(f"(this run also shows the repair of {proven_by!r} reusable)")
            raise
        proven_by = name if following == "reused" else None


# The order deal_in_process deals the damages in: those whose repair keeps the template first,
# one after the other (each start also shows what the one before left reusable), those that
# drop the template on fresh copies, and the others last (they need no template to damage,
# nor a fresh copy).
_IN_PROCESS_ORDER = {"reused": 0, "template only": 1, "template": 1, "any": 2, "initdb": 3}
_NEEDS_TEMPLATE = ("reused", "template only", "template")


def deal_in_process(cached: CachedProject, damages: dict[str, tuple[Damage, str]]) -> None:
    """Each damage in turn to the project's copy of a prebuilt cache, each followed by the next
    run's start decided in this process with the kit's own functions
    (``CachedProject.next_start``): the folder made fit, the lock taken, the cluster reused or
    made anew, the template checked and kept or dropped, as expected (see ``EXPECTED``); then
    the next start must take what a repair in place left as it is (shown by the next damage's
    start where that must reuse, else by a start of its own). What a real run adds after the start
    (the template built anew where it was dropped or never made, the tests on it) does not
    depend on the damage but on what the start left: ``deal_in_turn`` shows it with real
    runs for some of the damages.

    A damage whose repair must keep the template, or drop it, starts from a cache with its
    template: what the one before left if it kept it, else a fresh copy; any other from what
    the one before left.
    """
    __tracebackhide__ = True
    prebuilt = cached.prebuilt
    assert prebuilt is not None, "deal_in_process needs a copy of a prebuilt cache"
    whole = cached.last_run()  # the record of the copy: what the damages of files need
    state = {"system": whole["system"], "template": whole["template"], "ready": True}
    cases = sorted(damages.items(), key=lambda case: _IN_PROCESS_ORDER[case[1][1]])
    for index, (name, (harm, expected)) in enumerate(cases):
        assert expected in EXPECTED, expected
        if expected in _NEEDS_TEMPLATE and not state["ready"]:
            whole = cached.start_from(prebuilt)
            state = {"system": whole["system"], "template": whole["template"], "ready": True}
        try:
            args = harm(cached, whole)
            assert not isinstance(args, tuple), "a damage with options needs a real run"
            after = cached.next_start()
            kept = after == {**state, "reused_cluster": True}
            dropped = not after["ready"] and after["template"] is None
            if expected == "initdb":
                assert not after["reused_cluster"], "a damaged cluster must be made anew"
                assert after["system"] != state["system"], "a damaged cluster must be made anew"
            elif expected in ("template", "template only"):
                assert dropped, "the damaged template was kept"
                if expected == "template only":
                    assert after["reused_cluster"], "a whole cluster was made anew"
                    assert after["system"] == state["system"], "a whole cluster was made anew"
            elif expected == "reused":
                assert kept, f"the cache was rebuilt, not repaired: {after}"
            else:
                assert kept or dropped, f"neither repaired nor rebuilt: {after}"
            state = {key: after[key] for key in state}
            following = cases[index + 1][1][1] if index + 1 < len(cases) else None
            # A cluster made anew was made in a folder wiped whole (all but the lock and the
            # project record, which every start makes fit), as a cold run makes it: that it
            # is reused as made is shown by the real runs (deal_in_turn, the warm-run tests).
            if following != "reused" and after["reused_cluster"]:
                again = cached.next_start()
                assert again == {**state, "reused_cluster": True}, "the repair did not stick"
        except BaseException as error:
            error.add_note(f"damage: {name} (decided in this process)")
            raise


# --- the items app on the test's transaction --------------------------------------------------


def items_on_the_tests_transaction(
    project: Project, monkeypatch: pytest.MonkeyPatch, app: str = ITEMS_APP
) -> None:
    """The items app (or ``app``, built on it) as ``items_app``, its ``get_session`` overridden
    with the test's session, on the embedded server (not a developer's configured one)."""
    monkeypatch.delenv("TESTKIT_DATABASE_URL", raising=False)
    project.ini(
        testkit_app="items_app:app",
        testkit_schema="items_app:Base.metadata",
        testkit_session_dependency="items_app:get_session",
    )
    project.module("items_app", app)


# --- the shared cached cluster, checked for leftovers ------------------------------------------

from conftest import SubsessionShare  # noqa: E402


@pytest.fixture(name="shared_tmpdir")
def shared_tmpdir_fixture(
    subsession_share: SubsessionShare, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The TMPDIR of the sub-sessions that share this process's cached cluster, for
    ``assert_nothing_left`` after a sub-session: one that ended has stopped the cached server
    and removed its run folder, as one on a throwaway cluster (``private_tmpdir``) has, without
    an initdb of its own. For the tests of what a run leaves behind that do not test the
    throwaway cluster itself. No developer's TESTKIT_DATABASE_URL reaches the sub-sessions.

    A test module imports it as ``shared_tmpdir_fixture``; its tests ask for ``shared_tmpdir``."""
    monkeypatch.delenv("TESTKIT_DATABASE_URL", raising=False)
    assert_nothing_left(subsession_share.tmpdir)  # an earlier test's leftovers are not this one's
    return subsession_share.tmpdir


# --- a sub-session with pytest's cache provider on, in the test's own TMPDIR -------------------

from conftest import plugin_options, run_subsession  # noqa: E402


def run_with_cache(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """A sub-session in pytester's folder with pytest's cache provider on (the kit's cached
    cluster, or the template it keeps on a configured server), in the TMPDIR the test set
    (``private_tmpdir``): plugins and forking as ``Project.run`` has them, which keeps a
    private TMPDIR's sub-sessions off the cache instead."""
    options, after = plugin_options(args)
    return run_subsession(pytester, [*options, *args, *after])
