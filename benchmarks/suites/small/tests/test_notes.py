"""Notes of a user: nested under /users/{id}/notes."""


async def make_user(client, email="grace@example.com"):
    response = await client.post("/users", json={"email": email, "full_name": "Grace Hopper"})
    assert response.status_code == 201, response.text
    return response.json()


async def make_note(client, user_id, title, pinned=False):
    response = await client.post(
        f"/users/{user_id}/notes", json={"title": title, "body": "...", "pinned": pinned}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_create_note(client):
    user = await make_user(client)
    note = await make_note(client, user["id"], "first")
    assert note["owner_id"] == user["id"] and note["title"] == "first"


async def test_note_for_missing_user(client):
    response = await client.post("/users/999999/notes", json={"title": "x"})
    assert response.status_code == 404


async def test_list_notes(client):
    user = await make_user(client)
    notes = [await make_note(client, user["id"], f"note {i}") for i in range(3)]
    response = await client.get(f"/users/{user['id']}/notes")
    assert response.json() == notes


async def test_pinned_filter(client):
    user = await make_user(client)
    await make_note(client, user["id"], "plain")
    pinned = await make_note(client, user["id"], "pinned", pinned=True)
    response = await client.get(f"/users/{user['id']}/notes", params={"pinned": True})
    assert response.json() == [pinned]


async def test_notes_are_per_user(client):
    ada = await make_user(client, "ada@example.com")
    bob = await make_user(client, "bob@example.com")
    mine = await make_note(client, ada["id"], "ada's")
    await make_note(client, bob["id"], "bob's")
    response = await client.get(f"/users/{ada['id']}/notes")
    assert response.json() == [mine]


async def test_delete_note(client):
    user = await make_user(client)
    note = await make_note(client, user["id"], "to delete")
    response = await client.delete(f"/users/{user['id']}/notes/{note['id']}")
    assert response.status_code == 204
    assert (await client.get(f"/users/{user['id']}/notes")).json() == []


async def test_delete_someone_elses_note(client):
    ada = await make_user(client, "ada@example.com")
    bob = await make_user(client, "bob@example.com")
    note = await make_note(client, ada["id"], "ada's")
    response = await client.delete(f"/users/{bob['id']}/notes/{note['id']}")
    assert response.status_code == 404
