"""Each test gets a ``db_session`` of its own: nothing a test sets on its session (an event
listener, an ``info`` entry, objects added by a fixture that then failed) reaches the next."""

from __future__ import annotations

from conftest import Project

MODELS = """
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Thing(Base):
    __tablename__ = "things"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)
"""


def test_nothing_set_on_a_tests_session_reaches_the_next_test(project: Project) -> None:
    project.ini(testkit_schema="things_models:Base.metadata")
    project.module("things_models", MODELS)
    project.module(
        "test_sessions",
        """
        import pytest
        from sqlalchemy import event, select, text

        from things_models import Thing

        SEEN = []
        SESSIONS = []


        def note(state):
            SEEN.append("a listener of test 1")


        async def test_1_sets_up_its_session(db_session):
            SESSIONS.append(db_session)
            db_session.info["test 1"] = True
            event.listen(db_session.sync_session, "do_orm_execute", note)
            db_session.add(Thing(name="one"))
            await db_session.flush()
            await db_session.execute(text("SELECT 1"))
            assert SEEN == ["a listener of test 1"]  # the listener works


        async def test_2_sees_none_of_it(db_session):
            SEEN.clear()
            assert db_session is not SESSIONS[0]
            assert "test 1" not in db_session.info
            assert list(db_session) == []
            assert (await db_session.scalars(select(Thing.name))).all() == []
            assert SEEN == []


        @pytest.fixture
        def fails_after_adding(db_session):
            db_session.add(Thing(name="added by a failed fixture"))
            raise RuntimeError("the fixture failed")


        async def test_3_never_runs(fails_after_adding):
            raise AssertionError("not reached")


        async def test_4_has_nothing_pending(db_session):
            assert not db_session.new
            await db_session.flush()
            assert (await db_session.scalars(select(Thing.name))).all() == []
        """,
    )
    project.run().assert_outcomes(passed=3, errors=1)
