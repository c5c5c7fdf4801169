"""(F1) One raw psycopg connection for the session, in an outer transaction; each test runs
inside a savepoint that is rolled back. The runner has created the tables beforehand."""

import os

import psycopg
import pytest
from sqlalchemy.engine import make_url


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
async def connection(anyio_backend):
    url = make_url(os.environ["BENCH_DATABASE_URL"]).set(drivername="postgresql")
    conninfo = url.render_as_string(hide_password=False)
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        async with conn.transaction(force_rollback=True):
            yield conn


@pytest.fixture
async def db(connection):
    async with connection.transaction(savepoint_name="test", force_rollback=True):
        yield connection
