"""The taskboard API: projects, their tasks, an audit log, and a background archive job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, HTTPException, Response, status
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from . import services
from .db import engine, get_session
from .models import AuditEntry, Project, Task
from .schemas import (
    AuditOut,
    BulkResult,
    BulkTasks,
    ProjectCreate,
    ProjectDetail,
    ProjectOut,
    ProjectSummary,
    TaskCreate,
    TaskOut,
    TaskUpdate,
)
from .security import require_admin
from .settings import Settings, get_settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await engine.dispose()


app = FastAPI(title="Taskboard", lifespan=lifespan)
app.add_middleware(TrustedHostMiddleware, allowed_hosts=get_settings().allowed_hosts)
# Routers nested with prefixes, as most projects lay them out (included at the end).
projects_router = APIRouter(prefix="/projects", tags=["projects"])
tasks_router = APIRouter(prefix="/tasks", tags=["tasks"])
# The audit log is for admins: every route of this router needs the API token.
audit_router = APIRouter(prefix="/audit", tags=["audit"], dependencies=[Depends(require_admin)])

SessionDep = Annotated[AsyncSession, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


@app.get("/health")
async def health(settings: SettingsDep) -> dict[str, str]:
    return {"status": "ok", "app": settings.app_name}


@projects_router.post("", status_code=status.HTTP_201_CREATED)
async def create_project(body: ProjectCreate, session: SessionDep) -> ProjectOut:
    project = Project(name=body.name, tasks=[Task(title=task.title) for task in body.tasks])
    session.add(project)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        # After the rollback: the audit entry is committed on its own, the project is not.
        await services.audit("project.rejected", body.name)
        raise HTTPException(
            status.HTTP_409_CONFLICT, "duplicate project name or task title"
        ) from None
    await services.audit("project.created", body.name)
    return ProjectOut.model_validate(project)


@projects_router.get("")
async def list_projects(session: SessionDep) -> list[ProjectSummary]:
    # One query whatever the number of projects: open tasks counted by the database.
    open_tasks = func.count(Task.id).filter(Task.status != "done")
    rows = await session.execute(
        select(Project, open_tasks)
        .outerjoin(Task, Task.project_id == Project.id)
        .group_by(Project.id)
        .order_by(Project.name)
    )
    return [
        ProjectSummary(id=p.id, name=p.name, archived=p.archived, open_tasks=n) for p, n in rows
    ]


async def _project(session: AsyncSession, project_id: int, *, with_tasks: bool = False) -> Project:
    options = [selectinload(Project.tasks)] if with_tasks else []
    project = await session.get(Project, project_id, options=options, populate_existing=True)
    if project is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"project {project_id} not found")
    return project


@projects_router.get("/{project_id}")
async def get_project(project_id: int, session: SessionDep) -> ProjectDetail:
    project = await _project(session, project_id, with_tasks=True)
    tasks = sorted(project.tasks, key=lambda task: task.id)
    return ProjectDetail(
        id=project.id,
        name=project.name,
        archived=project.archived,
        tasks=[TaskOut.model_validate(task) for task in tasks],
    )


@projects_router.delete("/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_project(project_id: int, session: SessionDep) -> Response:
    project = await _project(session, project_id, with_tasks=True)
    await session.delete(project)
    await session.commit()
    await services.audit("project.deleted", str(project_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@projects_router.post("/{project_id}/tasks", status_code=status.HTTP_201_CREATED)
async def create_task(project_id: int, body: TaskCreate, session: SessionDep) -> TaskOut:
    project = await _project(session, project_id)
    if project.archived:
        raise HTTPException(status.HTTP_409_CONFLICT, f"project {project_id} is archived")
    task = Task(project_id=project_id, title=body.title)
    session.add(task)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, f"task {body.title!r} exists") from None
    await services.audit("task.created", f"{project_id}: {body.title}")
    return TaskOut.model_validate(task)


@projects_router.post("/{project_id}/tasks/bulk")
async def create_tasks(project_id: int, body: BulkTasks, session: SessionDep) -> BulkResult:
    # Each title in its own savepoint: a duplicate is skipped, the others are kept.
    await _project(session, project_id)
    created, skipped = [], []
    for title in body.titles:
        try:
            async with session.begin_nested():
                session.add(Task(project_id=project_id, title=title))
        except IntegrityError:
            skipped.append(title)
        else:
            created.append(title)
    await session.commit()
    return BulkResult(created=created, skipped=skipped)


@projects_router.get("/{project_id}/tasks")
async def list_tasks(
    project_id: int, session: SessionDep, status_filter: str | None = None
) -> list[TaskOut]:
    query = select(Task).where(Task.project_id == project_id).order_by(Task.id)
    if status_filter is not None:
        query = query.where(Task.status == status_filter)
    return [TaskOut.model_validate(task) for task in await session.scalars(query)]


@tasks_router.patch("/{task_id}")
async def update_task(task_id: int, body: TaskUpdate, session: SessionDep) -> TaskOut:
    task = await session.get(Task, task_id)
    if task is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"task {task_id} not found")
    before, task.status = task.status, body.status
    await session.commit()
    await services.audit("task.status", f"{task_id}: {before} -> {body.status}")
    return TaskOut.model_validate(task)


@projects_router.post("/{project_id}/archive", status_code=status.HTTP_202_ACCEPTED)
async def archive(project_id: int, session: SessionDep, jobs: BackgroundTasks) -> dict[str, str]:
    await _project(session, project_id)
    # Runs after the response, in sessions of its own (services.archive_project).
    jobs.add_task(services.archive_project, project_id)
    return {"status": "archiving"}


@audit_router.get("")
async def audit_log(session: SessionDep, action: str | None = None) -> list[AuditOut]:
    query = select(AuditEntry).order_by(AuditEntry.id)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    return [AuditOut.model_validate(entry) for entry in await session.scalars(query)]


api = APIRouter()
for router in (projects_router, tasks_router, audit_router):
    api.include_router(router)
app.include_router(api)
