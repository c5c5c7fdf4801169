"""Work done outside the request's session, as services and jobs often are: each opens its
own ``SessionLocal()`` and commits, whatever happens to the request's transaction."""

from __future__ import annotations

from sqlalchemy import select, update

from .db import SessionLocal
from .models import AuditEntry, Project, Task


async def audit(action: str, detail: str) -> None:
    """Record an action in the audit log, committed on its own."""
    async with SessionLocal() as session:
        session.add(AuditEntry(action=action, detail=detail))
        await session.commit()


async def archive_project(project_id: int) -> None:
    """Background job: close every open task of the project, then archive it."""
    async with SessionLocal() as session, session.begin():
        project = await session.get(Project, project_id)
        if project is None:
            return
        await session.execute(
            update(Task)
            .where(Task.project_id == project_id, Task.status != "done")
            .values(status="done")
        )
        project.archived = True
    open_left = await count_open_tasks(project_id)
    await audit("project.archived", f"{project_id}: {open_left} open tasks left")


async def count_open_tasks(project_id: int) -> int:
    async with SessionLocal() as session:
        rows = await session.scalars(
            select(Task.id).where(Task.project_id == project_id, Task.status != "done")
        )
        return len(rows.all())
