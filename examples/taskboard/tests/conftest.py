"""As most projects' conftest.py: the app and its settings imported at module level.

The kit sets testkit_database_env before pytest imports this file, so the app's settings
(read from the environment at import, cached by get_settings()) already name the test database.
"""

from __future__ import annotations

from typing import Any

import pytest
from anyio_fastapi_testkit import ClientFactory

from taskboard.main import app  # noqa: F401 - imported at module level, as real suites do
from taskboard.settings import get_settings


@pytest.fixture
def settings_database() -> str:
    """The database name the app's cached settings hold."""
    return get_settings().database.name


@pytest.fixture
def api_client(client_factory: ClientFactory) -> Any:
    """A second client with headers of its own, beside the anonymous `client`."""
    return client_factory(headers={"X-Client": "api"})
