"""Requests that never reach the database: only the `client` fixture is used here.

Validation errors are answered before a handler runs, and the container's engine connects only
when a session first needs a connection, so these tests need no database (they run on trio too).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx


async def test_health_is_ok_and_names_the_app(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["app_name"] == "bookshelf"


async def test_health_reads_the_lifespan_state(client: httpx.AsyncClient) -> None:
    first = (await client.get("/health")).json()
    second = (await client.get("/health")).json()

    # started_at is set once, by the lifespan, not per request.
    assert first["started_at"] == second["started_at"]
    # Python 3.10's fromisoformat does not read the "Z" that pydantic writes for UTC.
    started_at = datetime.fromisoformat(first["started_at"].replace("Z", "+00:00"))
    assert started_at.tzinfo is not None
    # Set when this test session started the app, not some fixed or per-request value.
    assert timedelta(0) <= datetime.now(timezone.utc) - started_at < timedelta(hours=1)
    assert 0 <= first["uptime_seconds"] <= second["uptime_seconds"]


async def test_client_talks_to_testserver(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")

    assert str(response.request.url) == "http://testserver/health"


async def test_unknown_route_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/shelves")

    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


async def test_blank_author_name_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/authors", json={"name": "   "})

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "name"]


async def test_malformed_isbn_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/books", json={"title": "Dune", "author_id": 1, "isbn": "978-0-12", "year": 1965}
    )

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "isbn"]
    assert "10 or 13 digits" in error["msg"]


async def test_review_rating_outside_1_to_5_is_422(client: httpx.AsyncClient) -> None:
    too_low = await client.post("/books/1/reviews", json={"rating": 0})
    too_high = await client.post("/books/1/reviews", json={"rating": 6, "text": "!"})

    assert too_low.status_code == too_high.status_code == 422
    assert too_low.json()["detail"][0]["type"] == "greater_than_equal"
    assert too_high.json()["detail"][0]["type"] == "less_than_equal"


async def test_negative_offset_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/books", params={"offset": -1})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "offset"]


async def test_openapi_documents_the_endpoints(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/health", "/authors", "/books", "/books/{book_id}/reviews"} <= set(paths)
    assert set(paths["/books/{book_id}"]) == {"get", "patch", "delete"}
