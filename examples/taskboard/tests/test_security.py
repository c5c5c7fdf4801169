"""The app as deployed: behind TrustedHostMiddleware (the clients use ``testkit_base_url``,
a host the settings allow), and an admin API that needs a bearer token."""

from __future__ import annotations

import httpx
from anyio_fastapi_testkit import ClientFactory
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskboard.models import AuditEntry
from taskboard.settings import get_settings
from tests.helpers import api_project


async def test_the_clients_use_a_host_the_app_allows(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert str(response.request.url) == "http://taskboard.test/health"
    assert get_settings().allowed_hosts == ["taskboard.test"]


async def test_another_host_is_rejected(
    client: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    spoofed = await client.get("/health", headers={"Host": "evil.example"})
    default_host = await client_factory(base_url="http://testserver").get("/health")

    assert (spoofed.status_code, spoofed.text) == (400, "Invalid host header")
    assert (default_host.status_code, default_host.text) == (400, "Invalid host header")


async def test_the_audit_log_needs_the_token(
    client: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    anonymous = await client.get("/audit")
    wrong = await client_factory(headers={"Authorization": "Bearer not-the-token"}).get("/audit")
    basic = await client_factory(auth=("admin", "test-admin-token")).get("/audit")

    for response in (anonymous, wrong, basic):
        assert response.status_code == 401
        assert response.json() == {"detail": "missing or invalid API token"}
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_the_admin_reads_what_the_anonymous_client_wrote(
    client: httpx.AsyncClient, admin_client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    await api_project(client, "Artemis")  # writing projects needs no token

    response = await admin_client.get("/audit", params={"action": "project.created"})

    assert response.status_code == 200
    stored = (await db_session.scalars(select(AuditEntry))).all()
    assert [(e.action, e.detail) for e in stored] == [("project.created", "Artemis")]
    assert response.json() == [{"action": "project.created", "detail": "Artemis"}]
