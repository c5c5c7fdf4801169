"""A server that dies mid-session ends the run at the first test that finds it gone.

Without this, every later test errors on its own (a connection refused, one long traceback
each, hundreds of them for a real suite). A failing test whose error comes from the database
driver is followed by one short probe of the server; when the server does not answer, that
test's report becomes one message naming what was lost, and the session stops
(``session.shouldfail``, as ``--maxfail`` does). The kit's databases are then not dropped at
the end: there is nothing to drop them on (a configured server's next run drops them, as it
drops what killed runs leave; an embedded server's folder is deleted as usual). Under
pytest-xdist the worker tells the whole run (``SharedRun.mark_lost``): the other workers and
the controller then do not wait on that server at their end either; the controller goes
straight to stopping the kit's own server, and tries the drops on a configured one only if it
answers a probe.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

import pytest

from .._core.errors import DatabaseError, exception_chain
from .._diagnostics.timeouts import timed_out
from .stash import current_test_databases

if TYPE_CHECKING:
    from .run_databases import TestDatabases

_LOST_KEY = pytest.StashKey[str]()
_LOST_IN_KEY = pytest.StashKey[str]()  # the test that found the server gone


def _from_the_database(exc: BaseException) -> bool:
    """Whether the error could mean a lost server: the drivers' errors, SQLAlchemy's
    wrappers of them, the kit's connection errors, the OS's (refused, reset) and the kit's
    time limits."""
    for link in exception_chain(exc):
        module = type(link).__module__
        if (
            isinstance(link, (OSError, DatabaseError))
            # By module: a run that never loaded a driver (nor SQLAlchemy) does not load it here.
            or module.startswith(("psycopg", "asyncpg", "sqlalchemy.exc"))
            or timed_out(link)  # a server that stopped answering: nothing came back at all
        ):
            return True
    return False


def server_answers(databases: TestDatabases) -> bool:
    """Whether the server of ``databases`` accepts a connection and answers ``SELECT 1``."""
    from .._postgres.server import server_answers_at

    admin = databases.admin_url
    return True if admin is None else server_answers_at(admin)  # never started: nothing was lost


def lost_message(databases: TestDatabases, nodeid: str, when: str, not_run: int) -> str:
    from .._postgres.server import PROBE_TIMEOUT

    return (
        f"The PostgreSQL server {databases.description} stopped answering during {nodeid}: "
        f"its {when} failed on a database error, and a new connection to the server failed "
        f"within {PROBE_TIMEOUT} s. Lost with it: the kit's test database, its template and "
        f"the test's transaction. The run stops here ({not_run} tests not run), instead of "
        "erroring each of them.\n"
        "Fix: find out why the server ended or hung (its log; for the embedded server, run "
        "again: it is started anew), then run again."
    )


def server_lost(config: pytest.Config) -> str | None:
    """The message of the server's loss, once a test found it (None before)."""
    return config.stash.get(_LOST_KEY, None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not report.failed or call.excinfo is None:
        return report
    config = item.config
    lost_in = config.stash.get(_LOST_IN_KEY, None)
    if lost_in is not None:
        if lost_in == item.nodeid and report.when == "teardown":
            # The test that found the server gone has its one report already.
            report.outcome = "passed"
            report.longrepr = None
        else:
            report.longrepr = "The PostgreSQL server was lost (see the first error)."
        return report

    databases = current_test_databases(config)
    if databases is None or not _from_the_database(call.excinfo.value) or server_answers(databases):
        return report
    session = item.session
    not_run = max(session.testscollected - _position(session, item) - 1, 0)
    message = lost_message(databases, item.nodeid, report.when, not_run)
    config.stash[_LOST_KEY] = message
    config.stash[_LOST_IN_KEY] = item.nodeid
    databases.mark_lost()
    session.shouldfail = "the PostgreSQL server stopped answering"
    report.longrepr = message
    return report


def _position(session: pytest.Session, item: pytest.Item) -> int:
    try:
        return session.items.index(item)
    except ValueError:
        return 0
