"""(F0) Empty async tests run by anyio's pytest plugin on one event loop for the session."""

import pytest


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
async def _one_loop(anyio_backend):
    # A live session-scoped async fixture keeps anyio's runner (and its loop) for all tests.
    yield
