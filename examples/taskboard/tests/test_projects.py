"""Projects: commits, rollbacks (with the audit entry committed on its own), reads, deletes."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskboard.models import Project, Task
from tests.factories import ProjectFactory, TaskFactory
from tests.helpers import api_project, audit_actions, count


async def test_create_project_commits_and_audits(
    client: httpx.AsyncClient, admin_client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    response = await client.post("/projects", json={"name": "Apollo"})

    assert response.status_code == 201
    body = response.json()
    assert body == {"id": body["id"], "name": "Apollo", "archived": False}
    stored = await db_session.get(Project, body["id"])
    assert stored is not None and stored.name == "Apollo"
    assert await audit_actions(admin_client) == [("project.created", "Apollo")]


async def test_duplicate_name_is_rolled_back_but_the_audit_entry_stays(
    client: httpx.AsyncClient, admin_client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    await api_project(client, "Gemini")

    response = await client.post("/projects", json={"name": "Gemini"})

    assert response.status_code == 409
    assert await count(db_session, Project) == 1
    assert await audit_actions(admin_client) == [
        ("project.created", "Gemini"),
        ("project.rejected", "Gemini"),
    ]
    # The app goes on working after its rollback.
    await api_project(client, "Mercury")
    assert await count(db_session, Project) == 2


async def test_project_with_tasks_is_one_commit(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    project = await api_project(client, "Skylab", "design", "build", "launch")

    titles = await db_session.scalars(
        select(Task.title).where(Task.project_id == project["id"]).order_by(Task.id)
    )
    assert list(titles) == ["design", "build", "launch"]


async def test_duplicate_task_titles_roll_back_the_whole_project(
    client: httpx.AsyncClient, admin_client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    body = {"name": "Voyager", "tasks": [{"title": "same"}, {"title": "same"}]}

    response = await client.post("/projects", json=body)

    assert response.status_code == 409
    assert await count(db_session, Project) == 0
    assert await count(db_session, Task) == 0
    assert await audit_actions(admin_client) == [("project.rejected", "Voyager")]


async def test_project_detail_lists_its_tasks(client: httpx.AsyncClient) -> None:
    project = await ProjectFactory.create_async(name="Hubble")
    first = await TaskFactory.create_async(project=project, title="mirror")
    second = await TaskFactory.create_async(project=project, title="camera", status="done")

    response = await client.get(f"/projects/{project.id}")

    assert response.status_code == 200
    assert response.json() == {
        "id": project.id,
        "name": "Hubble",
        "archived": False,
        "tasks": [
            {"id": first.id, "project_id": project.id, "title": "mirror", "status": "todo"},
            {"id": second.id, "project_id": project.id, "title": "camera", "status": "done"},
        ],
    }


async def test_unknown_project_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/projects/424242")
    assert response.status_code == 404
    assert response.json() == {"detail": "project 424242 not found"}


async def test_delete_project_removes_its_tasks(
    client: httpx.AsyncClient, admin_client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    project = await ProjectFactory.create_async()
    await TaskFactory.create_batch_async(2, project=project)

    response = await client.delete(f"/projects/{project.id}")

    assert response.status_code == 204
    assert await count(db_session, Project) == 0
    assert await count(db_session, Task) == 0
    assert await audit_actions(admin_client) == [("project.deleted", str(project.id))]


async def test_list_counts_open_tasks(client: httpx.AsyncClient) -> None:
    busy = await ProjectFactory.create_async(name="b-busy")
    await TaskFactory.create_batch_async(3, project=busy)
    await TaskFactory.create_async(project=busy, status="done")
    await ProjectFactory.create_async(name="a-idle")

    response = await client.get("/projects")

    assert [(p["name"], p["open_tasks"]) for p in response.json()] == [
        ("a-idle", 0),
        ("b-busy", 3),
    ]


async def test_list_is_one_query_whatever_the_number_of_projects(
    client: httpx.AsyncClient, assert_max_queries: Any
) -> None:
    for _ in range(5):
        project = await ProjectFactory.create_async()
        await TaskFactory.create_batch_async(2, project=project)

    with assert_max_queries(1):
        response = await client.get("/projects")

    assert len(response.json()) == 5
