"""The API: users and their notes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, status
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from . import catalog  # noqa: F401  (the slow part of the import)
from .db import get_session
from .models import Note, User
from .settings import get_settings

SessionDep = Annotated[AsyncSession, Depends(get_session)]


class UserIn(BaseModel):
    email: str
    full_name: str


class UserOut(UserIn):
    model_config = ConfigDict(from_attributes=True)
    id: int


class NoteIn(BaseModel):
    title: str
    body: str = ""
    pinned: bool = False


class NoteOut(NoteIn):
    model_config = ConfigDict(from_attributes=True)
    id: int
    owner_id: int


users = APIRouter(prefix="/users", tags=["users"])


@users.post("", response_model=UserOut, status_code=status.HTTP_201_CREATED)
async def create_user(body: UserIn, session: SessionDep) -> User:
    user = User(email=body.email, full_name=body.full_name)
    session.add(user)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "email taken") from None
    return user


@users.get("/{user_id}", response_model=UserOut)
async def read_user(user_id: int, session: SessionDep) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such user")
    return user


@users.get("", response_model=list[UserOut])
async def list_users(session: SessionDep) -> list[User]:
    return list((await session.scalars(select(User).order_by(User.id))).all())


@users.post("/{user_id}/notes", response_model=NoteOut, status_code=status.HTTP_201_CREATED)
async def create_note(user_id: int, body: NoteIn, session: SessionDep) -> Note:
    if await session.get(User, user_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such user")
    note = Note(owner_id=user_id, title=body.title, body=body.body, pinned=body.pinned)
    session.add(note)
    await session.commit()
    return note


@users.get("/{user_id}/notes", response_model=list[NoteOut])
async def list_notes(user_id: int, session: SessionDep, pinned: bool | None = None) -> list[Note]:
    stmt = select(Note).where(Note.owner_id == user_id).order_by(Note.id)
    if pinned is not None:
        stmt = stmt.where(Note.pinned == pinned)
    return list((await session.scalars(stmt)).all())


@users.delete("/{user_id}/notes/{note_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_note(user_id: int, note_id: int, session: SessionDep) -> None:
    note = await session.get(Note, note_id)
    if note is None or note.owner_id != user_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such note")
    await session.delete(note)
    await session.commit()


app = FastAPI(title=get_settings().app_name)
app.include_router(users)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
