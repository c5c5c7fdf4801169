"""The billing service: it opens a session of its own from the app's sessionmaker, as
services called outside a request (jobs, webhooks) do."""

from __future__ import annotations

from sqlalchemy import select

from .db import SessionLocal
from .models import AuditEntry, Order, Product


class CheckoutError(Exception):
    pass


async def checkout(order_id: int) -> Order:
    async with SessionLocal() as session:
        order = await session.get(Order, order_id)
        if order is None:
            raise CheckoutError("no such order")
        if order.status != "open":
            raise CheckoutError(f"order is {order.status}")
        if not order.lines:
            raise CheckoutError("order is empty")
        products = {
            p.id: p
            for p in await session.scalars(
                select(Product).where(Product.id.in_([line.product_id for line in order.lines]))
            )
        }
        if not all(products[line.product_id].active for line in order.lines):
            raise CheckoutError("a product is no longer sold")
        order.total_cents = sum(line.quantity * line.unit_cents for line in order.lines)
        order.status = "paid"
        session.add(
            AuditEntry(action="checkout", order_id=order.id, amount_cents=order.total_cents)
        )
        await session.commit()
        return order
