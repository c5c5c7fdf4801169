"""The API: create users, create items for them, list items."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .db import engine, get_session
from .models import Item, User
from .schemas import ItemCreate, ItemOut, UserCreate, UserOut


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await engine.dispose()


app = FastAPI(title="benchapp", lifespan=lifespan)

SessionDep = Annotated[AsyncSession, Depends(get_session)]


@app.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, session: SessionDep) -> User:
    user = User(name=body.name, email=body.email)
    session.add(user)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "email already registered") from None
    return user


@app.post("/items", response_model=ItemOut, status_code=status.HTTP_201_CREATED)
async def create_item(body: ItemCreate, session: SessionDep) -> Item:
    if await session.get(User, body.owner_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "owner not found")
    item = Item(title=body.title, price_cents=body.price_cents, owner_id=body.owner_id)
    session.add(item)
    await session.commit()
    return item


@app.get("/items", response_model=list[ItemOut])
async def list_items(session: SessionDep, owner_id: int | None = None) -> list[Item]:
    stmt = select(Item).order_by(Item.id)
    if owner_id is not None:
        stmt = stmt.where(Item.owner_id == owner_id)
    return list((await session.scalars(stmt)).all())
