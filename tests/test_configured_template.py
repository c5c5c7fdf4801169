"""On a configured server the template is kept between runs while its schema key matches: the
next run clones its working database from it instead of building the schema again. Only a
template the kit made and marked for that key, owned by the run's user, is reused; a schema
change builds a new one (and the old one goes once no other run is alive); a database of
somebody else's under the kept name is never touched. Working databases stay per run.

The sub-sessions run with pytest's cache provider on (as users run), which the kit needs to
keep anything between runs; the module's embedded server (``pg_server``) stands in for the
configured server, the URL naming the database ``keptdb`` on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import (
    ITEMS_APP,
    SUBSESSION_TIMEOUT,
    Project,
    assert_nothing_left,
    database_names,
    drop_by_hand,
    lock_on_database,
    sql_rows,
)
from psycopg import sql
from scaffolding import run_with_cache
from sqlalchemy.engine import URL

from anyio_fastapi_testkit._postgres.server import RunningServer
from anyio_fastapi_testkit._provisioning.databases import PENDING_PREFIX, ownership_comment
from anyio_fastapi_testkit._provisioning.kept_template import GATE_LOCK, KEPT_RUN_ID, kept_key
from anyio_fastapi_testkit._provisioning.progress import NOTICE_AFTER, Progress

BASE = "keptdb"
KEPT_PREFIX = ownership_comment(f"{KEPT_RUN_ID} ")

# Records what the run's database is, and what the server holds while the run uses it.
RECORDING_TEST = """
import json
import os

import psycopg
from sqlalchemy import inspect
from sqlalchemy.engine import make_url


def test_record(database_url, request):
    url = make_url(str(database_url)).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        databases = dict(conn.execute(
            "SELECT datname, oid::bigint FROM pg_database"
        ).fetchall())
        columns = [name for (name,) in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'items' ORDER BY column_name"
        )]
    label = os.environ.get("RUN_LABEL", "run")
    with open(f"{label}.json", "w") as handle:
        json.dump({"database": url.database, "databases": databases, "columns": columns}, handle)
"""

# The items app with a column more: another schema, another key.
CHANGED_APP = ITEMS_APP.replace(
    "    name: Mapped[str] = mapped_column(String(100), unique=True)\n",
    "    name: Mapped[str] = mapped_column(String(100), unique=True)\n"
    "    note: Mapped[str | None] = mapped_column(String(100), default=None)\n",
)


@pytest.fixture
def keptdb(pg_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[URL]:
    """The configured URL (database ``keptdb``, set in TESTKIT_DATABASE_URL); everything made
    on the server is dropped afterwards."""
    admin = pg_server.info.admin_url
    before = set(database_names(admin))
    sql_rows(admin, f"CREATE DATABASE {BASE}")
    url = admin.set(database=BASE)
    monkeypatch.setenv("TESTKIT_DATABASE_URL", url.render_as_string(hide_password=False))
    yield url
    for name in set(database_names(admin)) - before:
        drop_by_hand(admin, name)


def comments(url: URL) -> dict[str, str | None]:
    rows = sql_rows(url, "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database")
    return {str(name): comment for name, comment in rows}


def kept_templates(url: URL) -> dict[str, str]:
    """The kit's kept templates on the server, by name: their schema key."""
    found = {}
    for name, comment in comments(url).items():
        key = kept_key(comment) if comment else None
        if key is not None:
            found[name] = key
    return found


def kit_databases(url: URL) -> list[str]:
    """What runs on ``keptdb`` made or left: named test_keptdb_..., or pending."""
    return sorted(
        name for name in database_names(url) if name.startswith((f"test_{BASE}_", PENDING_PREFIX))
    )


def items_project(project: Project, app: str = ITEMS_APP, env: bool = False) -> None:
    project.module("items_app", app)
    lines = [
        "[pytest]",
        "pythonpath = .",
        "testkit_app = items_app:app",
        "testkit_schema = items_app:Base.metadata",
    ]
    if env:
        lines.append("testkit_database_env = DATABASE_URL")
    # Written here, not by Project.ini: with autoload off, no other plugin's setting.
    project.pytester.makefile(".ini", pytest="\n".join(lines) + "\n")
    project.module("test_record", RECORDING_TEST)


def run(project: Project, label: str, *args: str, passed: int = 1) -> dict[str, Any]:
    """A run with pytest's cache provider on; what its test recorded, and its output."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RUN_LABEL", label)
        result = run_with_cache(project.pytester, *args)
    result.assert_outcomes(passed=passed)
    record: dict[str, Any] = json.loads((project.pytester.path / f"{label}.json").read_text())
    record["output"] = "\n".join([*result.outlines, *result.errlines])
    return record


def test_the_next_run_clones_the_kept_template_and_a_schema_change_replaces_it(
    project: Project, private_tmpdir: Path, keptdb: URL
) -> None:
    items_project(project)
    first = run(project, "first")
    kept = kept_templates(keptdb)
    assert len(kept) == 1, comments(keptdb)
    (template,) = kept
    assert template.startswith(f"test_{BASE}_") and template.endswith("_template")
    assert kit_databases(keptdb) == [template], "the run dropped its working database"
    oid = first["databases"][template]

    second = run(project, "second")

    assert kept_templates(keptdb) == kept
    assert second["databases"][template] == oid, "the kept template was built again"
    assert second["columns"] == ["id", "name"]
    assert second["database"] != first["database"], "working databases are per run"
    assert first["database"] not in second["databases"]
    assert kit_databases(keptdb) == [template]
    # One template in use: the run cloned the kept one and built none of its own.
    assert [name for name in second["databases"] if name.endswith("_template")] == [template]
    assert_nothing_left(private_tmpdir)

    # Another schema: a new template is built and kept, the old one dropped (no other run is
    # alive), and the new one is what the run after clones.
    items_project(project, CHANGED_APP)
    changed = run(project, "changed")

    new = kept_templates(keptdb)
    assert len(new) == 1 and new.keys() != kept.keys(), (kept, new)
    assert set(new.values()) != set(kept.values())
    assert changed["columns"] == ["id", "name", "note"]
    assert kit_databases(keptdb) == sorted(new), "the old template was not dropped"
    again = run(project, "again")
    assert again["columns"] == ["id", "name", "note"]
    (new_template,) = new
    assert again["databases"][new_template] == changed["databases"][new_template]
    assert_nothing_left(private_tmpdir)


# Somebody else's database under the name the kit keeps its template of this key under:
# unmarked, marked as a run's, or marked as the kept template of another key.
FOREIGN_COMMENTS = {
    "unmarked": None,
    "a-runs-mark": "created by anyio-fastapi-testkit; run 4242-0badf00d",
    "another-keys-mark": f"{KEPT_PREFIX}{'0' * 64}",
}


def test_a_database_under_the_kept_name_that_is_not_the_kept_template_is_never_touched(
    project: Project, private_tmpdir: Path, keptdb: URL
) -> None:
    items_project(project)
    run(project, "first")
    (name, key) = next(iter(kept_templates(keptdb).items()))
    # One case after the other on the one project: after each, the server holds what it held
    # before the case (a foreign database under the kept name, no kept template of the key),
    # which the next case changes only in the foreign database's comment. One run per case:
    # the checks after it show the server as the run found it, and on a configured server
    # the kit keeps nothing in pytest's cache, so a second run would find what the first did.
    for case, comment in FOREIGN_COMMENTS.items():
        try:
            drop_by_hand(keptdb, name)  # the kit's kept template, then the case before's
            sql_rows(keptdb, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            sql_rows(keptdb, "CREATE TABLE precious (note text)", name)
            sql_rows(keptdb, "INSERT INTO precious VALUES ('keep me')", name)
            if comment is not None:
                statement = sql.SQL("COMMENT ON DATABASE {} IS {}")
                sql_rows(keptdb, statement.format(sql.Identifier(name), sql.Literal(comment)))
            oid_query = sql.SQL("SELECT oid FROM pg_database WHERE datname = {}").format(name)
            oid = sql_rows(keptdb, oid_query)

            record = run(project, f"second-{case}")
            assert record["columns"] == ["id", "name"]
            own_templates = [db for db in record["databases"] if db.endswith("_template")]
            assert len(own_templates) == 2, own_templates  # the foreign one, the run's own

            assert sql_rows(keptdb, "SELECT note FROM precious", name) == [("keep me",)]
            assert comments(keptdb)[name] == comment
            assert sql_rows(keptdb, oid_query) == oid
            assert kit_databases(keptdb) == [name], "a run left its own template or database"
            assert key not in [value for db, value in kept_templates(keptdb).items() if db != name]
            assert_nothing_left(private_tmpdir)
        except BaseException as error:
            error.add_note(f"the database under the kept name: {case}")
            raise


def test_a_slow_build_before_collection_says_what_the_kit_is_doing(
    project: Project, private_tmpdir: Path, keptdb: URL
) -> None:
    # Building the template takes 2 s at least: the schema's create_all waits in the server.
    slow_app = ITEMS_APP + (
        "\nfrom sqlalchemy import DDL, event\n\n"
        'event.listen(Base.metadata, "after_create", DDL("SELECT pg_sleep(2)"))\n'
    )
    items_project(project, slow_app, env=True)  # built before collection
    first = run(project, "first")
    line = (
        "anyio-fastapi-testkit: building the template database "
        "(create_all of items_app:Base.metadata)…"
    )
    assert line in first["output"].splitlines(), first["output"]
    assert first["output"].count("anyio-fastapi-testkit: building") == 1
    assert "password" not in first["output"].lower()
    assert_nothing_left(private_tmpdir)


def test_progress_says_the_step_once_it_is_slow_and_nothing_when_fast() -> None:
    said: list[str] = []
    heard = threading.Event()

    def say(text: str) -> None:
        said.append(text)
        heard.set()

    with Progress(say, after=3600) as progress:
        progress.step("starting")
    assert said == [], "a fast start printed something"

    with Progress(say, after=0) as progress:
        progress.step("building the template database (alembic upgrade head)")
        assert heard.wait(SUBSESSION_TIMEOUT)
        progress.step("copying the template database into test_app")
    assert said == [
        "building the template database (alembic upgrade head)…",
        "copying the template database into test_app…",
    ]
    with Progress(None, after=0) as progress:  # no terminal: silent, and no thread
        progress.step("starting")


# A runs in the background (a new interpreter), its plugin autoload off: the kit by name.
RUN_ARGS = ("-p", "no:randomly", "-p", "anyio_fastapi_testkit.plugin")

# A's test holds its databases until B is done.
HOLDING_TEST = """
import time
from pathlib import Path

from sqlalchemy import func, select

from items_app import Item


async def test_hold(db_session):
    db_session.add(Item(name="a"))
    await db_session.flush()
    Path("a-ready").write_text("")
    deadline = time.monotonic() + 90
    while not Path("b-done").exists():
        assert time.monotonic() < deadline, "B never finished"
        time.sleep(0.05)
    assert await db_session.scalar(select(func.count(Item.id))) == 1
"""


def test_a_run_with_another_schema_leaves_a_live_runs_template_alone(
    project: Project, private_tmpdir: Path, keptdb: URL
) -> None:
    items_project(project)
    project.module("test_hold", HOLDING_TEST)
    # A builds the template of the old schema and keeps it, then holds its databases.
    a = subprocess.Popen(
        [sys.executable, "-m", "pytest", *RUN_ARGS, "test_hold.py"],
        cwd=project.pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    try:
        ready = project.pytester.path / "a-ready"
        deadline_reached = threading.Event()
        timer = threading.Timer(SUBSESSION_TIMEOUT, deadline_reached.set)
        timer.start()
        try:
            while not ready.exists():
                assert a.poll() is None, a.communicate()[0]
                assert not deadline_reached.is_set(), "A never got ready"
                deadline_reached.wait(0.05)
        finally:
            timer.cancel()
        (old,) = kept_templates(keptdb)
        # B: another schema, while A (the old one's) is alive. It may not drop A's template.
        items_project(project, CHANGED_APP)
        b = run(project, "b", "test_record.py")
        assert b["columns"] == ["id", "name", "note"]
        assert old in database_names(keptdb), "B dropped the template of a live run"
    finally:
        (project.pytester.path / "b-done").write_text("")
        output = a.communicate(timeout=SUBSESSION_TIMEOUT)[0]
    assert a.returncode == 0, output
    assert len(kept_templates(keptdb)) == 2  # A's, and the one B kept
    # The next run with B's schema finds no other run alive: the old template goes.
    run(project, "after", "test_record.py")
    assert old not in kept_templates(keptdb)
    assert len(kept_templates(keptdb)) == 1
    assert kit_databases(keptdb) == sorted(kept_templates(keptdb))
    assert_nothing_left(private_tmpdir)


# A conftest.py that connects to the test database as it is imported, as some projects' do
# (a SQLAlchemy engine from the settings the kit set): the threads running then, and what the
# connection found.
CONNECTING_CONFTEST = """
import json
import os
import threading
from pathlib import Path

from sqlalchemy import create_engine, inspect

threads = sorted(thread.name for thread in threading.enumerate())
Path("in-conftest.json").write_text(json.dumps(threads))
engine = create_engine(os.environ["DATABASE_URL"])
with engine.connect() as conn:
    seen = {"database": engine.url.database, "tables": inspect(conn).get_table_names()}
engine.dispose()
Path("conftest-saw.json").write_text(json.dumps(seen))
"""


def waiting_for_the_gate(url: URL, holder: int) -> bool:
    """Whether a session other than ``holder`` waits for the kit's gate lock."""
    statement = sql.SQL(
        "SELECT 1 FROM pg_stat_activity WHERE pid <> {} AND wait_event_type = 'Lock' "
        "AND query ILIKE '%pg_advisory_lock%'"
    ).format(holder)
    return bool(sql_rows(url, statement))


def record_of(folder: Path) -> str:
    """The working database the second run recorded."""
    return str(json.loads((folder / "second.json").read_text())["database"])


def test_the_working_database_is_copied_while_the_conftest_files_are_imported(
    project: Project, private_tmpdir: Path, keptdb: URL
) -> None:
    items_project(project, env=True)
    run(project, "first")  # builds the template and keeps it
    (template,) = kept_templates(keptdb)
    project.module("conftest", CONNECTING_CONFTEST)
    folder = project.pytester.path
    gate = psycopg.connect(keptdb.render_as_string(hide_password=False), autocommit=True)
    with lock_on_database(keptdb, template):  # the copy of the template cannot end before this does
        # The lookup of the kept template waits too, long enough for the kit to say so: then
        # it says each later step, but none from the thread that copies (by then pytest
        # imports the conftest files, and a line from there would toggle its capture).
        gate.execute("SELECT pg_advisory_lock(%s, %s)", GATE_LOCK)
        second = subprocess.Popen(
            [sys.executable, "-m", "pytest", *RUN_ARGS, "-v", "test_record.py"],
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "RUN_LABEL": "second"},
        )
        try:
            deadline = time.monotonic() + SUBSESSION_TIMEOUT
            while not waiting_for_the_gate(keptdb, gate.info.backend_pid):
                assert second.poll() is None, second.communicate()[0]
                assert time.monotonic() < deadline, "the run never looked for the template"
                time.sleep(0.05)
            time.sleep(NOTICE_AFTER + 0.5)
            gate.close()
            entered = folder / "in-conftest.json"
            while not entered.exists():
                assert second.poll() is None, second.communicate()[0]
                assert time.monotonic() < deadline, "the conftest.py was never imported"
                time.sleep(0.05)
            assert "testkit-working-database" in json.loads(entered.read_text())
            # Its connection waits for the copy, which waits for this lock: it says so.
            time.sleep(NOTICE_AFTER + 0.5)
            assert not (folder / "conftest-saw.json").exists()
        except BaseException:
            second.kill()
            raise
        finally:
            gate.close()
    output = second.communicate(timeout=SUBSESSION_TIMEOUT)[0]
    assert second.returncode == 0, output
    assert "test_record.py::test_record PASSED" in output, output
    said = [line for line in output.splitlines() if line.startswith("anyio-fastapi-testkit: ")]
    assert said == [
        "anyio-fastapi-testkit: looking for the template database kept by earlier runs…",
        f"anyio-fastapi-testkit: copying the template database into {record_of(folder)}…",
    ], output
    record = json.loads((folder / "second.json").read_text())
    assert record["database"] == record_of(folder)
    saw = json.loads((folder / "conftest-saw.json").read_text())
    assert saw == {"database": record["database"], "tables": ["items"]}
    assert template in record["databases"], "the run did not clone the kept template"
    assert kit_databases(keptdb) == [template]
    assert_nothing_left(private_tmpdir)


def test_a_copy_that_fails_while_the_conftest_files_load_stops_the_run_before_its_tests(
    project: Project, private_tmpdir: Path, keptdb: URL
) -> None:
    items_project(project, env=True)
    run(project, "first")
    (template,) = kept_templates(keptdb)
    # A session that stays on the template: the copy gives up after the kit's busy timeout.
    with psycopg.connect(keptdb.set(database=template).render_as_string(hide_password=False)):
        result = run_with_cache(project.pytester, "test_record.py")
    output = "\n".join([*result.outlines, *result.errlines])
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    assert output.count("The test database is prepared before the app is imported") == 1, output
    assert repr(template) in output, output
    assert "Traceback" not in output and "INTERNALERROR" not in output, output
    assert not (project.pytester.path / "second.json").exists()
    assert kit_databases(keptdb) == [template], "the run left its working database"
    assert_nothing_left(private_tmpdir)
