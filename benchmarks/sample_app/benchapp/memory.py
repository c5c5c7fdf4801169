"""The same API with no database: users and items kept in dictionaries (floor F2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, status

from .schemas import ItemCreate, ItemOut, UserCreate, UserOut


@dataclass
class Store:
    users: dict[int, UserOut] = field(default_factory=dict)
    items_by_owner: dict[int, list[ItemOut]] = field(default_factory=dict)
    all_items: list[ItemOut] = field(default_factory=list)
    emails: set[str] = field(default_factory=set)
    next_id: int = 1

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


store = Store()


def get_store() -> Store:
    return store


StoreDep = Annotated[Store, Depends(get_store)]

app = FastAPI(title="benchapp-memory")


@app.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, store: StoreDep) -> UserOut:
    if body.email in store.emails:
        raise HTTPException(status.HTTP_409_CONFLICT, "email already registered")
    user = UserOut(
        id=store.new_id(), name=body.name, email=body.email, created_at=datetime.now(timezone.utc)
    )
    store.emails.add(body.email)
    store.users[user.id] = user
    return user


@app.post("/items", response_model=ItemOut, status_code=status.HTTP_201_CREATED)
async def create_item(body: ItemCreate, store: StoreDep) -> ItemOut:
    if body.owner_id not in store.users:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "owner not found")
    item = ItemOut(
        id=store.new_id(),
        title=body.title,
        price_cents=body.price_cents,
        owner_id=body.owner_id,
        created_at=datetime.now(timezone.utc),
    )
    store.items_by_owner.setdefault(body.owner_id, []).append(item)
    store.all_items.append(item)
    return item


@app.get("/items", response_model=list[ItemOut])
async def list_items(store: StoreDep, owner_id: int | None = None) -> list[ItemOut]:
    if owner_id is not None:
        return store.items_by_owner.get(owner_id, [])
    return store.all_items
