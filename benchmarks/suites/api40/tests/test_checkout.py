"""Checkout goes through the billing service, which opens a session of its own."""

import pytest
from shop.models import AuditEntry, Order
from sqlalchemy import func, select

from .helpers import customer, line, order, product


async def filled_order(client, quantities=(2,), price=250):
    ada = await customer(client)
    created = await order(client, ada["id"])
    for i, quantity in enumerate(quantities):
        item = await product(client, f"SKU-{i}", price)
        response = await line(client, ada["id"], created["id"], item["id"], quantity)
        assert response.status_code == 201, response.text
    return ada, created


async def checkout(client, customer_id, order_id):
    return await client.post(f"/customers/{customer_id}/orders/{order_id}/checkout")


async def test_checkout_pays_the_order(client):
    ada, created = await filled_order(client)
    response = await checkout(client, ada["id"], created["id"])
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "paid" and response.json()["total_cents"] == 500


@pytest.mark.parametrize(("quantities", "total"), [((1,), 250), ((1, 1), 500), ((3, 2, 1), 1500)])
async def test_checkout_totals(client, quantities, total):
    ada, created = await filled_order(client, quantities)
    assert (await checkout(client, ada["id"], created["id"])).json()["total_cents"] == total


async def test_checkout_writes_an_audit_entry(client):
    ada, created = await filled_order(client)
    await checkout(client, ada["id"], created["id"])
    entries = (await client.get("/audit")).json()
    assert entries == [{"action": "checkout", "order_id": created["id"], "amount_cents": 500}]


async def test_checkout_twice_conflicts(client):
    ada, created = await filled_order(client)
    await checkout(client, ada["id"], created["id"])
    response = await checkout(client, ada["id"], created["id"])
    assert response.status_code == 409 and "paid" in response.text


async def test_empty_order_cannot_be_paid(client):
    ada = await customer(client)
    created = await order(client, ada["id"])
    response = await checkout(client, ada["id"], created["id"])
    assert response.status_code == 409 and "empty" in response.text


async def test_paid_order_takes_no_more_lines(client):
    ada, created = await filled_order(client)
    await checkout(client, ada["id"], created["id"])
    extra = await product(client, "EXTRA")
    assert (await line(client, ada["id"], created["id"], extra["id"])).status_code == 409


async def test_the_service_writes_are_visible_to_the_test_session(client, db_session):
    ada, created = await filled_order(client)
    await checkout(client, ada["id"], created["id"])
    paid = await db_session.get(Order, created["id"])
    await db_session.refresh(paid)
    assert paid.status == "paid"
    count = await db_session.scalar(select(func.count()).select_from(AuditEntry))
    assert count == 1


async def test_nothing_of_earlier_tests_is_left(db_session):
    assert await db_session.scalar(select(func.count()).select_from(Order)) == 0
    assert await db_session.scalar(select(func.count()).select_from(AuditEntry)) == 0
