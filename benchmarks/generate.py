"""Generate the benchmark's test projects: one folder per set-up, N tests each.

Every project holds a copy of the sample app (``sample_app/benchapp``), the set-up's
``pytest.ini`` and ``conftest.py`` (from ``setups/<template>/``) and ``tests/`` with N
generated tests. Each database test creates a user and two items through the API, lists the
items and asserts that exactly those rows exist (an isolation check).

Run on its own to look at a project: ``python benchmarks/generate.py K --n 5 --out /tmp/k``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE_APP = HERE / "sample_app" / "benchapp"
TEMPLATES = HERE / "setups"
TESTS_PER_MODULE = 50
RSS_PLUGIN = "bench_rss"


@dataclass(frozen=True)
class Setup:
    key: str
    template: str  # folder under setups/
    body: str  # "api", "api_owner", "sql" or "empty"
    runner: str  # "kit", "asyncio" (pytest-asyncio) or "anyio" (anyio's plugin alone)
    database: bool  # gets a database of its own on the shared server
    tables: bool  # the runner creates the tables in it beforehand
    title: str
    extra: bool = False  # not in the default selection


SETUPS: tuple[Setup, ...] = (
    Setup("K", "kit", "api", "kit", True, False, "anyio-fastapi-testkit, ini settings only"),
    Setup(
        "B",
        "b_savepoint",
        "api",
        "asyncio",
        True,
        False,
        "pytest-asyncio session loop, hand-written savepoint recipe",
    ),
    Setup(
        "A",
        "a_per_test_loop",
        "api",
        "asyncio",
        True,
        False,
        "pytest-asyncio per-test loop, engine + create_all/drop_all per test",
    ),
    Setup(
        "C",
        "c_session_loop",
        "api",
        "asyncio",
        True,
        False,
        "pytest-asyncio session loop, create_all/drop_all per test",
    ),
    Setup("F0", "f0_empty", "empty", "anyio", False, False, "floor: empty anyio test, one loop"),
    Setup(
        "F1", "f1_raw_sql", "sql", "anyio", True, True, "floor: same SQL, raw psycopg, savepoint"
    ),
    Setup(
        "F2",
        "f2_memory",
        "api_owner",
        "anyio",
        False,
        False,
        "floor: same HTTP calls, in-memory app",
    ),
    Setup(
        "F3",
        "f3_once",
        "api_owner",
        "anyio",
        True,
        True,
        "floor: real app + ORM, fixture stack built once",
    ),
    Setup(
        "F4",
        "f4_per_request",
        "api_owner",
        "anyio",
        True,
        True,
        "floor: as F3, with a session per request",
    ),
    Setup(
        "K0", "kit", "empty", "kit", True, False, "diagnostic: empty async test under the kit", True
    ),
    Setup(
        "K-noleak",
        "kit_noleak",
        "api",
        "kit",
        True,
        False,
        "diagnostic: K with testkit_leak_check = off",
        True,
    ),
    Setup(
        "K-nodiag",
        "kit_nodiag",
        "api",
        "kit",
        True,
        False,
        "diagnostic: K with testkit_leaked_tasks and testkit_blocked_loop off",
        True,
    ),
    Setup(
        "B-lifespan",
        "b_lifespan",
        "api",
        "asyncio",
        True,
        False,
        "B with LifespanManager per test",
        True,
    ),
)
BY_KEY = {setup.key: setup for setup in SETUPS}


def database_name(setup: Setup) -> str:
    return "bench_" + setup.key.lower().replace("-", "_")


# --- test bodies ------------------------------------------------------------------------------

_API_TEST = """
async def test_user_items_{i:04d}(client):
    response = await client.post("/users", json={{"name": "User {i}", "email": "user{i}@example.com"}})
    assert response.status_code == 201, response.text
    user = response.json()
    first = await client.post(
        "/items", json={{"title": "Item {i}a", "price_cents": {i}00, "owner_id": user["id"]}}
    )
    assert first.status_code == 201, first.text
    second = await client.post(
        "/items", json={{"title": "Item {i}b", "price_cents": {i}50, "owner_id": user["id"]}}
    )
    assert second.status_code == 201, second.text
    listed = await client.get({list_args})
    assert listed.status_code == 200, listed.text
    assert listed.json() == [first.json(), second.json()]{comment}
"""

_SQL_HEADER = """
INSERT_USER = (
    "INSERT INTO users (name, email) VALUES (%s, %s) RETURNING users.id, users.created_at"
)
INSERT_ITEM = (
    "INSERT INTO items (title, price_cents, owner_id) VALUES (%s, %s, %s) "
    "RETURNING items.id, items.title, items.price_cents, items.owner_id, items.created_at"
)
LIST_ITEMS = (
    "SELECT items.id, items.title, items.price_cents, items.owner_id, items.created_at "
    "FROM items ORDER BY items.id"
)
"""

_SQL_TEST = """
async def test_user_items_{i:04d}(db):
    async with db.transaction():
        cursor = await db.execute(INSERT_USER, ("User {i}", "user{i}@example.com"))
        user_id, _ = await cursor.fetchone()
    async with db.transaction():
        cursor = await db.execute(INSERT_ITEM, ("Item {i}a", {i}00, user_id))
        first = await cursor.fetchone()
    async with db.transaction():
        cursor = await db.execute(INSERT_ITEM, ("Item {i}b", {i}50, user_id))
        second = await cursor.fetchone()
    cursor = await db.execute(LIST_ITEMS)
    assert await cursor.fetchall() == [first, second]  # isolation check
"""

_EMPTY_TEST = """
async def test_empty_{i:04d}():
    pass
"""


def _test_source(body: str, i: int) -> str:
    if body == "api":
        return _API_TEST.format(
            i=i, list_args='"/items"', comment="  # isolation check: only this test's rows"
        )
    if body == "api_owner":
        # Nothing is rolled back between these tests: list this test's user's items.
        return _API_TEST.format(
            i=i, list_args='"/items", params={"owner_id": user["id"]}', comment=""
        )
    if body == "sql":
        return _SQL_TEST.format(i=i)
    if body == "empty":
        return _EMPTY_TEST.format(i=i)
    raise ValueError(f"unknown test body {body!r}")


def _module_header(setup: Setup) -> str:
    lines = [f'"""Generated by benchmarks/generate.py for set-up {setup.key}."""', ""]
    if setup.runner == "anyio":
        lines += ["import pytest", "", "pytestmark = pytest.mark.anyio", ""]
    if setup.body == "sql":
        lines.append(_SQL_HEADER.strip("\n"))
    return "\n".join(lines).rstrip("\n") + "\n"


RSS_PLUGIN_SOURCE = '''\
"""Write the peak RSS of this pytest process (KiB) to $BENCH_RSS_FILE at the session's end."""

import os
import resource


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("BENCH_RSS_FILE")
    if path:
        with open(path, "w") as out:
            out.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
'''


def generate(setup: Setup, n: int, dest: Path) -> Path:
    """Write the project of ``setup`` with ``n`` tests into ``dest`` (replaced if present)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copytree(SAMPLE_APP, dest / "benchapp", ignore=shutil.ignore_patterns("__pycache__"))
    template = TEMPLATES / setup.template
    for name in ("pytest.ini", "conftest.py"):
        if (template / name).is_file():
            shutil.copy2(template / name, dest / name)
    (dest / f"{RSS_PLUGIN}.py").write_text(RSS_PLUGIN_SOURCE)
    tests = dest / "tests"
    tests.mkdir()
    header = _module_header(setup)
    for start in range(0, n, TESTS_PER_MODULE):
        stop = min(n, start + TESTS_PER_MODULE)
        body = "\n".join(_test_source(setup.body, i) for i in range(start + 1, stop + 1))
        module = tests / f"test_bench_{start // TESTS_PER_MODULE:03d}.py"
        module.write_text(header + body)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setup", choices=sorted(BY_KEY))
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    path = generate(BY_KEY[args.setup], args.n, args.out)
    print(
        textwrap.dedent(f"""\
        {path}: set-up {args.setup}, {args.n} tests.
        It needs BENCH_DATABASE_URL (non-kit set-ups) or --testkit-db-url (kit set-ups);
        run.py creates those databases and passes them.""")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
