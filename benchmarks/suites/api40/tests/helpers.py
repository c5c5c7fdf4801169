"""Small builders shared by the tests (through the API, as users write them)."""


async def product(client, sku="SKU-1", price=250, name="Widget"):
    response = await client.post("/products", json={"sku": sku, "name": name, "price_cents": price})
    assert response.status_code == 201, response.text
    return response.json()


async def customer(client, email="ada@example.com", name="Ada"):
    response = await client.post("/customers", json={"email": email, "name": name})
    assert response.status_code == 201, response.text
    return response.json()


async def order(client, customer_id):
    response = await client.post(f"/customers/{customer_id}/orders")
    assert response.status_code == 201, response.text
    return response.json()


async def line(client, customer_id, order_id, product_id, quantity=1):
    return await client.post(
        f"/customers/{customer_id}/orders/{order_id}/lines",
        json={"product_id": product_id, "quantity": quantity},
    )
