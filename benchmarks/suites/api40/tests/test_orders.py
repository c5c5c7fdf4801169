import pytest

from .helpers import customer, line, order, product


async def test_create_order(client):
    ada = await customer(client)
    created = await order(client, ada["id"])
    assert created == {
        "id": created["id"],
        "customer_id": ada["id"],
        "status": "open",
        "total_cents": 0,
        "lines": [],
    }


async def test_order_of_missing_customer(client):
    assert (await client.post("/customers/999999/orders")).status_code == 404


async def test_list_orders_of_a_customer(client):
    ada = await customer(client, "ada@example.com")
    bob = await customer(client, "bob@example.com")
    mine = [await order(client, ada["id"]) for _ in range(2)]
    await order(client, bob["id"])
    assert (await client.get(f"/customers/{ada['id']}/orders")).json() == mine


async def test_read_order(client):
    ada = await customer(client)
    created = await order(client, ada["id"])
    assert (await client.get(f"/customers/{ada['id']}/orders/{created['id']}")).json() == created


async def test_order_of_another_customer_is_not_found(client):
    ada = await customer(client, "ada@example.com")
    bob = await customer(client, "bob@example.com")
    created = await order(client, ada["id"])
    response = await client.get(f"/customers/{bob['id']}/orders/{created['id']}")
    assert response.status_code == 404


async def test_add_line(client):
    ada = await customer(client)
    widget = await product(client, price=300)
    created = await order(client, ada["id"])
    response = await line(client, ada["id"], created["id"], widget["id"], 2)
    assert response.status_code == 201, response.text
    [added] = response.json()["lines"]
    assert added["quantity"] == 2 and added["unit_cents"] == 300


async def test_add_two_lines(client):
    ada = await customer(client)
    a = await product(client, "A", 100)
    b = await product(client, "B", 200)
    created = await order(client, ada["id"])
    await line(client, ada["id"], created["id"], a["id"])
    response = await line(client, ada["id"], created["id"], b["id"], 3)
    assert [x["product_id"] for x in response.json()["lines"]] == [a["id"], b["id"]]


async def test_same_product_twice_conflicts(client):
    ada = await customer(client)
    a = await product(client)
    created = await order(client, ada["id"])
    await line(client, ada["id"], created["id"], a["id"])
    response = await line(client, ada["id"], created["id"], a["id"])
    assert response.status_code == 409


async def test_line_of_missing_product(client):
    ada = await customer(client)
    created = await order(client, ada["id"])
    assert (await line(client, ada["id"], created["id"], 999999)).status_code == 404


@pytest.mark.parametrize("quantity", [0, -1])
async def test_line_needs_a_positive_quantity(client, quantity):
    ada = await customer(client)
    a = await product(client)
    created = await order(client, ada["id"])
    assert (await line(client, ada["id"], created["id"], a["id"], quantity)).status_code == 422


async def test_inactive_product_cannot_be_ordered(client):
    ada = await customer(client)
    a = await product(client)
    await client.patch(f"/products/{a['id']}", json={"active": False})
    created = await order(client, ada["id"])
    assert (await line(client, ada["id"], created["id"], a["id"])).status_code == 404
