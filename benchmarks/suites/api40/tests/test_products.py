import pytest

from .helpers import product


async def test_create_product(client):
    created = await product(client)
    assert created["sku"] == "SKU-1" and created["active"] is True


async def test_duplicate_sku_conflicts(client):
    await product(client)
    response = await client.post("/products", json={"sku": "SKU-1", "name": "x", "price_cents": 1})
    assert response.status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"sku": "", "name": "x", "price_cents": 1},
        {"sku": "A", "name": "x", "price_cents": -1},
        {"sku": "A", "price_cents": 1},
    ],
    ids=["empty-sku", "negative-price", "no-name"],
)
async def test_invalid_product_is_rejected(client, body):
    response = await client.post("/products", json=body)
    assert response.status_code == 422


async def test_read_product(client):
    created = await product(client)
    assert (await client.get(f"/products/{created['id']}")).json() == created


async def test_read_missing_product(client):
    assert (await client.get("/products/999999")).status_code == 404


async def test_list_products_sees_only_this_tests_rows(client):
    made = [await product(client, f"SKU-{i}") for i in range(3)]
    assert (await client.get("/products")).json() == made


async def test_patch_product(client):
    created = await product(client)
    response = await client.patch(f"/products/{created['id']}", json={"price_cents": 999})
    assert response.json()["price_cents"] == 999 and response.json()["name"] == "Widget"


async def test_deactivate_and_filter(client):
    kept = await product(client, "SKU-A")
    gone = await product(client, "SKU-B")
    await client.patch(f"/products/{gone['id']}", json={"active": False})
    assert (await client.get("/products", params={"active": True})).json() == [kept]


async def test_delete_product(client):
    created = await product(client)
    assert (await client.delete(f"/products/{created['id']}")).status_code == 204
    assert (await client.get(f"/products/{created['id']}")).status_code == 404
