"""Users: create, read, list, conflicts."""


async def make_user(client, email="ada@example.com", name="Ada Lovelace"):
    response = await client.post("/users", json={"email": email, "full_name": name})
    assert response.status_code == 201, response.text
    return response.json()


async def test_health(client):
    response = await client.get("/health")
    assert response.json() == {"status": "ok"}


async def test_create_user(client):
    user = await make_user(client)
    assert user["email"] == "ada@example.com" and user["id"] > 0


async def test_read_user(client):
    user = await make_user(client)
    response = await client.get(f"/users/{user['id']}")
    assert response.json() == user


async def test_read_missing_user(client):
    response = await client.get("/users/999999")
    assert response.status_code == 404


async def test_duplicate_email_conflicts(client):
    await make_user(client)
    response = await client.post("/users", json={"email": "ada@example.com", "full_name": "X"})
    assert response.status_code == 409


async def test_list_users_sees_only_this_tests_rows(client):
    first = await make_user(client, "a@example.com")
    second = await make_user(client, "b@example.com")
    response = await client.get("/users")
    assert response.json() == [first, second]


async def test_invalid_user_is_rejected(client):
    response = await client.post("/users", json={"email": "no-name@example.com"})
    assert response.status_code == 422
