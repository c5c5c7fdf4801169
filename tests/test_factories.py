"""Test-data factories bound to the test's session: polyfactory and factory-boy, by ini option
(``testkit_factories``) and by ``persist_with``, in real sub-sessions on the embedded server."""

from __future__ import annotations

import sys

import pytest
from conftest import ITEMS_APP, Project

from anyio_fastapi_testkit import ConfigError, persist_with

# Factories as a project keeps them: configured for production (its own sessionmaker), so a
# factory the kit failed to bind would commit through the app's engine (a closed port here).
FACTORIES = """
import factory
from polyfactory import Use
from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory

from items_app import Item, SessionLocal

counter = iter(range(1_000_000))


class ItemFactory(SQLAlchemyFactory[Item]):
    __set_primary_key__ = False
    __async_session__ = SessionLocal
    name = Use(lambda: f"poly-{next(counter):03}")


class ItemBoyFactory(factory.alchemy.SQLAlchemyModelFactory):
    class Meta:
        model = Item
        sqlalchemy_session_persistence = "flush"

    name = factory.Sequence(lambda n: f"boy-{n:03}")


class PendingItemFactory(factory.alchemy.SQLAlchemyModelFactory):
    class Meta:
        model = Item
        sqlalchemy_session_persistence = None

    name = factory.Sequence(lambda n: f"pending-{n:03}")
"""

# A sync check, outside any fixture of the kit: is every factory configured as it was written?
RESTORED = """
from items_app import SessionLocal
from item_factories import ItemBoyFactory, ItemFactory, PendingItemFactory


def check_restored():
    assert ItemFactory.__dict__["__async_session__"] is SessionLocal
    for name in ("__session__", "__async_persistence__", "__sync_persistence__"):
        assert name not in ItemFactory.__dict__, name
    for cls in (ItemBoyFactory, PendingItemFactory):
        assert cls._meta.sqlalchemy_session is None
        assert cls._meta.sqlalchemy_session_factory is None
"""

ITEMS_SETTINGS = {
    "testkit_app": "items_app:app",
    "testkit_schema": "items_app:Base.metadata",
    "testkit_session_dependency": "items_app:get_session",
}


@pytest.fixture(autouse=True)
def _embedded_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESTKIT_DATABASE_URL", raising=False)


def factories_project(project: Project, **settings: str) -> Project:
    project.module("items_app", ITEMS_APP)
    project.module("item_factories", FACTORIES)
    project.module("restored", RESTORED)
    project.ini(**{**ITEMS_SETTINGS, "testkit_factories": "item_factories", **settings})
    return project


# The rows of both libraries' factories, bound by testkit_factories, in one sub-session:
# polyfactory's async saves (test_poly) and factory-boy's sync ones through db_session's sync
# side (test_boy), each test's outcome checked by name.
POLY_TESTS = """
from sqlalchemy import func, select

from items_app import Item
from item_factories import ItemFactory
from restored import check_restored

async def test_1_rows_are_seen_by_the_app(client, db_session):
    made = await ItemFactory.create_async(name="made")
    batch = await ItemFactory.create_batch_async(3)
    assert made.id is not None and all(item.id for item in batch)
    expected = sorted(["made", *(item.name for item in batch)])
    assert (await client.get("/items")).json() == expected
    assert await db_session.scalar(select(func.count(Item.id))) == 4

async def test_2_client_only_test_still_persists(client):
    await ItemFactory.create_async(name="only-client")
    assert (await client.get("/items")).json() == ["only-client"]

async def test_3_nothing_survived(client):
    assert (await client.get("/items")).json() == []

async def test_4_a_failing_test(client):
    await ItemFactory.create_async(name="from-a-failing-test")
    raise AssertionError("this test fails")

async def test_5_still_nothing(client):
    assert (await client.get("/items")).json() == []

def test_6_configuration_restored_between_tests():
    check_restored()
"""

BOY_TESTS = """
from helpers_names import names
from item_factories import ItemBoyFactory, PendingItemFactory

async def test_1_run_sync_flushes(client, db_session):
    made = await db_session.run_sync(lambda _: ItemBoyFactory.create_batch(2))
    assert all(item.id is not None for item in made)
    assert (await client.get("/items")).json() == ["boy-000", "boy-001"]

async def test_2_pending_rows_are_flushed_by_the_next_query(client, db_session):
    PendingItemFactory.create()
    assert (await client.get("/items")).json() == ["pending-000"]
    PendingItemFactory.create()
    await db_session.flush()
    assert await names(db_session) == ["pending-000", "pending-001"]

async def test_3_nothing_survived(db_session):
    assert await names(db_session) == []

async def test_4_sync_factory_without_db_session(client):
    PendingItemFactory.create()
"""

HELPERS_NAMES = """
from sqlalchemy import select

from items_app import Item

async def names(session):
    return list(await session.scalars(select(Item.name).order_by(Item.name)))
"""


def test_factories_of_both_libraries_reach_the_app_and_are_rolled_back(
    project: Project,
) -> None:
    factories_project(project)
    project.module("test_poly", POLY_TESTS)
    project.module("test_boy", BOY_TESTS)
    project.module("helpers_names", HELPERS_NAMES)
    result = project.run("-v")
    result.stdout.fnmatch_lines_random(
        [
            # polyfactory: rows seen by the app, rolled back, even after a failing test
            "*test_poly.py::test_1_rows_are_seen_by_the_app PASSED*",
            "*test_poly.py::test_2_client_only_test_still_persists PASSED*",
            "*test_poly.py::test_3_nothing_survived PASSED*",
            "*test_poly.py::test_4_a_failing_test FAILED*",
            "*test_poly.py::test_5_still_nothing PASSED*",
            "*test_poly.py::test_6_configuration_restored_between_tests PASSED*",
            # factory-boy through the sync side of db_session
            "*test_boy.py::test_1_run_sync_flushes PASSED*",
            "*test_boy.py::test_2_pending_rows_are_flushed_by_the_next_query PASSED*",
            "*test_boy.py::test_3_nothing_survived PASSED*",
            "*test_boy.py::test_4_sync_factory_without_db_session FAILED*",
            "*PendingItemFactory (testkit_factories) was asked to save synchronously, and sync "
            "code cannot open the test's database session. Request db_session in this test*",
        ]
    )
    result.stdout.fnmatch_lines(["*AssertionError: this test fails*"])
    result.assert_outcomes(passed=8, failed=2)


def test_persist_with_binds_for_a_block_and_a_sync_session(project: Project) -> None:
    factories_project(project, testkit_factories="")
    project.module(
        "test_persist_with",
        """
        import pytest
        from sqlalchemy import select

        import item_factories
        from anyio_fastapi_testkit import persist_with
        from items_app import Item
        from item_factories import ItemBoyFactory, ItemFactory
        from restored import check_restored

        async def test_async_session_block(client, db_session):
            with persist_with(db_session, item_factories):
                await ItemFactory.create_async(name="in-block")
                await db_session.run_sync(lambda _: ItemBoyFactory.create())
            check_restored()
            assert (await client.get("/items")).json() == ["boy-000", "in-block"]

        async def test_restored_after_an_error_in_the_block(db_session):
            with pytest.raises(ZeroDivisionError), persist_with(db_session, ItemFactory):
                await ItemFactory.create_async()
                1 / 0
            check_restored()

        def test_sync_session(db_session_sync):
            with persist_with(db_session_sync, ItemFactory, ItemBoyFactory):
                ItemFactory.create_sync(name="sync-poly")
                ItemBoyFactory.create()
            names = db_session_sync.scalars(select(Item.name).order_by(Item.name)).all()
            assert names == ["boy-001", "sync-poly"]
            check_restored()

        def test_sync_session_rolled_back(db_session_sync):
            assert db_session_sync.scalars(select(Item.name)).all() == []
        """,
    )
    project.run("-v").assert_outcomes(passed=4)


def test_on_trio_a_factory_save_skips_and_other_tests_run(project: Project) -> None:
    factories_project(project, testkit_backends="asyncio trio")
    project.module(
        "test_trio",
        """
        from item_factories import ItemFactory

        async def test_saves(client):
            await ItemFactory.create_async()
            assert len((await client.get("/items")).json()) == 1

        async def test_builds_only(client):
            assert ItemFactory.build(name="x").name == "x"
            assert (await client.get("/health")).json() == {"status": "ok"}
        """,
    )
    result = project.run("-v", "-rs")
    result.stdout.fnmatch_lines_random(
        [
            "*test_saves[[]asyncio[]] PASSED*",
            "*test_saves[[]trio[]] SKIPPED*",
            "*test_builds_only[[]trio[]] PASSED*",
            "SKIPPED *async driver (psycopg) runs on asyncio only*",
        ]
    )
    result.assert_outcomes(passed=3, skipped=1)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "items_app",
            "*testkit_factories = 'items_app': module 'items_app' defines no SQLAlchemy factory*",
        ),
        (
            "items_app:Item",
            "*testkit_factories = 'items_app:Item': <class 'items_app.Item'> is not a SQLAlchemy "
            "factory. Accepted: polyfactory's SQLAlchemyFactory or factory-boy's*",
        ),
        ("item_factories:Missing", "*'item_factories' has no attribute 'Missing'*"),
        ("no_such_module", "*module 'no_such_module' cannot be imported*"),
    ],
)
def test_a_wrong_factories_setting_is_a_clear_error(
    project: Project, value: str, message: str
) -> None:
    factories_project(project, testkit_factories=value)
    project.module(
        "test_any",
        """
        async def test_uses_the_client(client):
            pass
        """,
    )
    result = project.run()
    result.stdout.fnmatch_lines([message])
    assert result.parseoutcomes().get("errors") == 1


def test_not_a_factory_and_polyfactory_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    class NotAFactory:
        pass

    from sqlalchemy.orm import Session

    session = Session()
    with (
        pytest.raises(ConfigError, match="is not a SQLAlchemy factory") as info,
        persist_with(session, NotAFactory),
    ):
        pass
    assert "not installed" not in str(info.value)
    # As if neither library were installed: the message says how to install them.
    monkeypatch.setitem(sys.modules, "polyfactory.factories.sqlalchemy_factory", None)
    monkeypatch.setitem(sys.modules, "factory.alchemy", None)
    with pytest.raises(ConfigError) as info, persist_with(session, NotAFactory):
        pass
    assert 'polyfactory is not installed: pip install "anyio-fastapi-testkit[factories]"' in str(
        info.value
    )
    assert "factory-boy is not installed" in str(info.value)
    with (
        pytest.raises(TypeError, match="needs a SQLAlchemy AsyncSession or Session"),
        persist_with("not a session", NotAFactory),  # type: ignore[arg-type]
    ):
        pass
