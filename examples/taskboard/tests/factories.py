"""polyfactory factories. No session here: ``testkit_factories = "tests.factories"`` makes them
persist through the test's ``db_session`` during each test (and puts them back after)."""

from __future__ import annotations

from itertools import count

from polyfactory import Use
from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory

from taskboard.models import AuditEntry, Project, Task

_numbers = count(1)


class ProjectFactory(SQLAlchemyFactory[Project]):
    __set_primary_key__ = False
    __set_relationships__ = False

    name = Use(lambda: f"project-{next(_numbers):04}")
    archived = False


class TaskFactory(SQLAlchemyFactory[Task]):
    __set_primary_key__ = False
    __set_foreign_keys__ = False  # the project comes from the relationship below
    __set_relationships__ = True

    title = Use(lambda: f"task-{next(_numbers):04}")
    status = "todo"
    project = Use(ProjectFactory.build)


class AuditEntryFactory(SQLAlchemyFactory[AuditEntry]):
    __set_primary_key__ = False

    action = "seeded"
