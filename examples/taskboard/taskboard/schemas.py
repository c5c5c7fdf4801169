"""Request and response bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["todo", "doing", "done"]


class TaskCreate(BaseModel):
    title: str = Field(min_length=1, max_length=200)


class TaskUpdate(BaseModel):
    status: Status


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    title: str
    status: Status


class ProjectCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    tasks: list[TaskCreate] = []


class ProjectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    archived: bool


class ProjectSummary(ProjectOut):
    open_tasks: int


class ProjectDetail(ProjectOut):
    tasks: list[TaskOut]


class BulkTasks(BaseModel):
    titles: list[str]


class BulkResult(BaseModel):
    created: list[str]
    skipped: list[str]


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    action: str
    detail: str
