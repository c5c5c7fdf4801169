from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..db import get_session
from ..models import Product
from ..schemas import ProductIn, ProductOut, ProductPatch

router = APIRouter(prefix="/products", tags=["products"])
SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_product(product_id: int, session: SessionDep) -> Product:
    product = await session.get(Product, product_id)
    if product is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such product")
    return product


@router.post("", response_model=ProductOut, status_code=status.HTTP_201_CREATED)
async def create(body: ProductIn, session: SessionDep) -> Product:
    product = Product(**body.model_dump())
    session.add(product)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "sku taken") from None
    return product


@router.get("", response_model=list[ProductOut])
async def list_(session: SessionDep, active: bool | None = None) -> list[Product]:
    stmt = select(Product).order_by(Product.id)
    if active is not None:
        stmt = stmt.where(Product.active == active)
    return list((await session.scalars(stmt)).all())


@router.get("/{product_id}", response_model=ProductOut)
async def read(product: Annotated[Product, Depends(get_product)]) -> Product:
    return product


@router.patch("/{product_id}", response_model=ProductOut)
async def update(
    body: ProductPatch, product: Annotated[Product, Depends(get_product)], session: SessionDep
) -> Product:
    for name, value in body.model_dump(exclude_unset=True).items():
        setattr(product, name, value)
    await session.commit()
    return product


@router.delete("/{product_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete(product: Annotated[Product, Depends(get_product)], session: SessionDep) -> None:
    await session.delete(product)
    await session.commit()
