import pytest

from .helpers import customer


async def test_create_customer(client):
    created = await customer(client)
    assert created["email"] == "ada@example.com"


async def test_duplicate_email_conflicts(client):
    await customer(client)
    response = await client.post("/customers", json={"email": "ada@example.com", "name": "B"})
    assert response.status_code == 409


async def test_read_customer(client):
    created = await customer(client)
    assert (await client.get(f"/customers/{created['id']}")).json() == created


async def test_list_customers(client):
    made = [await customer(client, f"c{i}@example.com") for i in range(4)]
    assert (await client.get("/customers")).json() == made


@pytest.mark.parametrize("email", ["x@example.com", "y@example.org", "z@example.net"])
async def test_customers_with_the_same_email_in_other_tests(client, email):
    # Each test creates the same emails as its siblings: only isolation lets them pass.
    await customer(client, email)
    await customer(client, "shared@example.com")
    assert len((await client.get("/customers")).json()) == 2
