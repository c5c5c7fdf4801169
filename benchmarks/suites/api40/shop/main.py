from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .db import engine
from .routers import customers, products


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await engine.dispose()


app = FastAPI(title="shop", lifespan=lifespan)
app.include_router(products.router)
app.include_router(customers.customers)
app.include_router(customers.audit)
