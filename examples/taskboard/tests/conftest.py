"""As most projects' conftest.py: the app and its settings imported at module level.

The kit sets testkit_database_env before pytest imports this file, so the app's settings
(read from the environment at import, cached by get_settings()) already name the test database.
"""

from __future__ import annotations

import httpx
import pytest
from anyio_fastapi_testkit import ClientFactory

from taskboard.main import app  # noqa: F401 - imported at module level, as real suites do
from taskboard.settings import get_settings


@pytest.fixture
def settings_database() -> str:
    """The database name the app's cached settings hold."""
    return get_settings().database.name


@pytest.fixture
def admin_client(client_factory: ClientFactory) -> httpx.AsyncClient:
    """A second client, beside the anonymous `client`, that sends the admin API token (set by
    testkit_database_env's API_TOKEN entry, read by the app's settings)."""
    token = get_settings().api_token
    assert token is not None, "API_TOKEN is unset: add it to testkit_database_env"
    client: httpx.AsyncClient = client_factory(
        headers={"Authorization": f"Bearer {token.get_secret_value()}"}
    )
    return client
