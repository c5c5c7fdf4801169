"""Tasks: create, conflicts and the app's own savepoints, status updates, filters, archiving."""

from __future__ import annotations

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskboard.models import Task
from tests.factories import ProjectFactory, TaskFactory
from tests.helpers import audit_actions, count


async def test_create_task(
    client: httpx.AsyncClient, admin_client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    project = await ProjectFactory.create_async()

    response = await client.post(f"/projects/{project.id}/tasks", json={"title": "write docs"})

    assert response.status_code == 201
    body = response.json()
    assert body == {
        "id": body["id"],
        "project_id": project.id,
        "title": "write docs",
        "status": "todo",  # the server default, read back after the commit
    }
    assert await audit_actions(admin_client) == [("task.created", f"{project.id}: write docs")]


async def test_task_for_unknown_project_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/projects/424242/tasks", json={"title": "orphan"})
    assert response.status_code == 404


async def test_empty_title_is_422(client: httpx.AsyncClient) -> None:
    project = await ProjectFactory.create_async()
    response = await client.post(f"/projects/{project.id}/tasks", json={"title": ""})
    assert response.status_code == 422


async def test_duplicate_title_is_409_and_the_next_request_works(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    task = await TaskFactory.create_async(title="review")
    url = f"/projects/{task.project_id}/tasks"

    conflict = await client.post(url, json={"title": "review"})
    again = await client.post(url, json={"title": "merge"})

    assert (conflict.status_code, again.status_code) == (409, 201)
    titles = await db_session.scalars(select(Task.title).order_by(Task.title))
    assert list(titles) == ["merge", "review"]


async def test_bulk_create_skips_duplicates_in_savepoints(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    task = await TaskFactory.create_async(title="exists")

    response = await client.post(
        f"/projects/{task.project_id}/tasks/bulk", json={"titles": ["a", "exists", "b", "a"]}
    )

    assert response.json() == {"created": ["a", "b"], "skipped": ["exists", "a"]}
    assert await count(db_session, Task) == 3


async def test_update_status(
    client: httpx.AsyncClient, admin_client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    task = await TaskFactory.create_async()

    response = await client.patch(f"/tasks/{task.id}", json={"status": "doing"})

    assert response.status_code == 200
    assert response.json()["status"] == "doing"
    await db_session.refresh(task)
    assert task.status == "doing"
    assert await audit_actions(admin_client) == [("task.status", f"{task.id}: todo -> doing")]


async def test_unknown_status_is_422(client: httpx.AsyncClient) -> None:
    task = await TaskFactory.create_async()
    response = await client.patch(f"/tasks/{task.id}", json={"status": "blocked"})
    assert response.status_code == 422


async def test_update_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    response = await client.patch("/tasks/424242", json={"status": "done"})
    assert response.status_code == 404


async def test_filter_tasks_by_status(client: httpx.AsyncClient) -> None:
    project = await ProjectFactory.create_async()
    await TaskFactory.create_async(project=project, title="t1", status="todo")
    await TaskFactory.create_async(project=project, title="t2", status="done")
    await TaskFactory.create_async(project=project, title="t3", status="done")

    response = await client.get(f"/projects/{project.id}/tasks", params={"status_filter": "done"})

    assert [task["title"] for task in response.json()] == ["t2", "t3"]


async def test_archived_project_refuses_new_tasks(client: httpx.AsyncClient) -> None:
    project = await ProjectFactory.create_async(archived=True)
    response = await client.post(f"/projects/{project.id}/tasks", json={"title": "late"})
    assert response.status_code == 409
    assert response.json() == {"detail": f"project {project.id} is archived"}
