"""Code that opens its own ``SessionLocal()`` outside any dependency: the audit service and the
archive job. ``testkit_sessionmaker`` joins those sessions to the test's transaction."""

from __future__ import annotations

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskboard import services
from taskboard.models import AuditEntry, Project, Task
from tests.factories import ProjectFactory, TaskFactory
from tests.helpers import audit_actions


async def test_the_service_called_directly_commits_into_the_test(
    admin_client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    await services.audit("manual", "called from the test")

    entries = await db_session.scalars(select(AuditEntry.detail))
    assert list(entries) == ["called from the test"]
    assert await audit_actions(admin_client) == [("manual", "called from the test")]


async def test_the_archive_job_runs_after_the_response(
    client: httpx.AsyncClient, admin_client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    project = await ProjectFactory.create_async()
    await TaskFactory.create_batch_async(2, project=project)
    await TaskFactory.create_async(project=project, status="done")

    response = await client.post(f"/projects/{project.id}/archive")

    assert response.status_code == 202
    # The background job ran (in sessions of its own) before the client returned.
    await db_session.refresh(project)
    assert project.archived is True
    statuses = await db_session.scalars(select(Task.status).where(Task.project_id == project.id))
    assert set(statuses) == {"done"}
    assert await audit_actions(admin_client) == [
        ("project.archived", f"{project.id}: 0 open tasks left")
    ]


async def test_archive_of_unknown_project_is_404_and_starts_no_job(
    client: httpx.AsyncClient, admin_client: httpx.AsyncClient
) -> None:
    response = await client.post("/projects/424242/archive")
    assert response.status_code == 404
    assert await audit_actions(admin_client) == []


async def test_count_open_tasks_sees_rows_of_the_test_session(db_session: AsyncSession) -> None:
    project = Project(name="seen", tasks=[Task(title="a"), Task(title="b", status="done")])
    db_session.add(project)
    await db_session.flush()  # not committed: the service's session shares the test connection

    assert await services.count_open_tasks(project.id) == 1


async def test_archive_job_called_directly(db_session: AsyncSession) -> None:
    task = await TaskFactory.create_async()

    await services.archive_project(task.project_id)

    await db_session.refresh(task)
    assert task.status == "done"
