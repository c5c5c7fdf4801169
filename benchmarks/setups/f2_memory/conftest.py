"""(F2) The in-memory app (no database) and one client for the whole session."""

import httpx2
import pytest
from asgi_lifespan import LifespanManager
from benchapp.memory import app


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
async def client(anyio_backend):
    async with LifespanManager(app) as manager:
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=manager.app), base_url="http://testserver"
        ) as ac:
            yield ac
