"""(F2) The in-memory app (no database) and one client for the whole session."""

try:
    import httpx2 as http  # what the kit's client uses where it is installed
except ImportError:  # httpx2 needs Python 3.11
    import httpx as http

import pytest
from asgi_lifespan import LifespanManager
from benchapp.memory import app


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
async def client(anyio_backend):
    async with LifespanManager(app) as manager:
        async with http.AsyncClient(
            transport=http.ASGITransport(app=manager.app), base_url="http://testserver"
        ) as ac:
            yield ac
