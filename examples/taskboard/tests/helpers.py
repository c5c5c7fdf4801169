"""Small helpers shared by the test modules."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskboard.models import Base


async def count(session: AsyncSession, model: type[Base]) -> int:
    """Rows in the model's table, asked of the database (not the session's identity map)."""
    return await session.scalar(select(func.count()).select_from(model)) or 0


async def api_project(client: httpx.AsyncClient, name: str, *tasks: str) -> dict[str, Any]:
    body = {"name": name, "tasks": [{"title": title} for title in tasks]}
    response = await client.post("/projects", json=body)
    assert response.status_code == 201, response.text
    project: dict[str, Any] = response.json()
    return project


async def audit_actions(admin_client: httpx.AsyncClient) -> list[tuple[str, str]]:
    """The audit log as the app serves it (to an admin: the client must send the API token)."""
    response = await admin_client.get("/audit")
    assert response.status_code == 200, response.text
    return [(entry["action"], entry["detail"]) for entry in response.json()]
