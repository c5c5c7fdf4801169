"""Customers, with their orders and the orders' lines in nested routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .. import billing
from ..db import get_session
from ..models import AuditEntry, Customer, Order, OrderLine, Product
from ..schemas import AuditOut, CustomerIn, CustomerOut, LineIn, OrderOut

SessionDep = Annotated[AsyncSession, Depends(get_session)]
customers = APIRouter(prefix="/customers", tags=["customers"])
orders = APIRouter(prefix="/{customer_id}/orders", tags=["orders"])
lines = APIRouter(prefix="/{order_id}/lines", tags=["lines"])
audit = APIRouter(prefix="/audit", tags=["audit"])


async def get_customer(customer_id: int, session: SessionDep) -> Customer:
    customer = await session.get(Customer, customer_id)
    if customer is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such customer")
    return customer


CustomerDep = Annotated[Customer, Depends(get_customer)]


async def get_order(customer: CustomerDep, order_id: int, session: SessionDep) -> Order:
    order = await session.get(Order, order_id)
    if order is None or order.customer_id != customer.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such order")
    return order


OrderDep = Annotated[Order, Depends(get_order)]


@customers.post("", response_model=CustomerOut, status_code=status.HTTP_201_CREATED)
async def create_customer(body: CustomerIn, session: SessionDep) -> Customer:
    customer = Customer(**body.model_dump())
    session.add(customer)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "email taken") from None
    return customer


@customers.get("", response_model=list[CustomerOut])
async def list_customers(session: SessionDep) -> list[Customer]:
    return list((await session.scalars(select(Customer).order_by(Customer.id))).all())


@customers.get("/{customer_id}", response_model=CustomerOut)
async def read_customer(customer: CustomerDep) -> Customer:
    return customer


@orders.post("", response_model=OrderOut, status_code=status.HTTP_201_CREATED)
async def create_order(customer: CustomerDep, session: SessionDep) -> Order:
    order = Order(customer_id=customer.id, lines=[])
    session.add(order)
    await session.commit()
    return order


@orders.get("", response_model=list[OrderOut])
async def list_orders(customer: CustomerDep, session: SessionDep) -> list[Order]:
    stmt = select(Order).where(Order.customer_id == customer.id).order_by(Order.id)
    return list((await session.scalars(stmt)).all())


@orders.get("/{order_id}", response_model=OrderOut)
async def read_order(order: OrderDep) -> Order:
    return order


@orders.post("/{order_id}/checkout", response_model=OrderOut)
async def checkout(order: OrderDep, session: SessionDep) -> Order:
    try:
        await billing.checkout(order.id)
    except billing.CheckoutError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    await session.refresh(order)
    return order


@lines.post("", response_model=OrderOut, status_code=status.HTTP_201_CREATED)
async def add_line(body: LineIn, order: OrderDep, session: SessionDep) -> Order:
    if order.status != "open":
        raise HTTPException(status.HTTP_409_CONFLICT, "order is closed")
    product = await session.get(Product, body.product_id)
    if product is None or not product.active:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such product")
    session.add(
        OrderLine(
            order_id=order.id,
            product_id=product.id,
            quantity=body.quantity,
            unit_cents=product.price_cents,
        )
    )
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "product already in the order") from None
    await session.refresh(order, ["lines"])
    return order


@audit.get("", response_model=list[AuditOut])
async def list_audit(session: SessionDep) -> list[AuditEntry]:
    return list((await session.scalars(select(AuditEntry).order_by(AuditEntry.id))).all())


orders.include_router(lines)
customers.include_router(orders)
