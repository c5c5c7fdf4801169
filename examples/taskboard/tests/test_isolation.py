"""Each test starts from the migrated, empty database, whichever way the previous one wrote:
through the app's request session, the audit service, the background job or a factory."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from taskboard import services
from taskboard.models import AuditEntry, Project, Task
from tests.factories import AuditEntryFactory, ProjectFactory, TaskFactory
from tests.helpers import api_project, audit_actions, count


async def test_1_writes_every_way(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    project = await api_project(client, "written-by-the-app", "one", "two")
    await client.post(f"/projects/{project['id']}/archive")
    await services.audit("direct", "written by the service")
    await TaskFactory.create_batch_async(2)
    await AuditEntryFactory.create_async()
    await db_session.commit()

    assert await count(db_session, Project) == 3
    assert await count(db_session, Task) == 4
    assert await count(db_session, AuditEntry) == 4


async def test_2_nothing_survived(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    assert await count(db_session, Project) == 0
    assert await count(db_session, Task) == 0
    assert await count(db_session, AuditEntry) == 0
    assert (await client.get("/projects")).json() == []
    # The same name is free again.
    await api_project(client, "written-by-the-app")


async def test_3_the_app_sees_nothing_either(admin_client: httpx.AsyncClient) -> None:
    assert await audit_actions(admin_client) == []


def test_4_factories_are_unbound_outside_the_tests() -> None:
    # A sync test that uses none of the kit's fixtures: the factories are as written.
    for factory in (ProjectFactory, TaskFactory, AuditEntryFactory):
        assert factory.__async_session__ is None
        assert factory.__async_persistence__ is None
        assert "__async_persistence__" not in factory.__dict__
