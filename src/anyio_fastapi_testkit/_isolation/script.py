"""The one-round-trip script that ends a test on the shared connection, through libpq.

Why it exists: after each test the kit sends ``ROLLBACK; BEGIN`` and the leak check's count
to the server as one message and reads one reply. Sent through psycopg's own
``connection.execute()`` it would cost the app its prepared statements (see ``run_script``),
and sent as separate statements it would cost a round trip each. What it saves per test is
measured in ``benchmarks/`` (figures in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from typing import Any

import anyio
from psycopg import pq


async def run_script(connection: Any, script: str) -> list[tuple[str, ...]]:
    """Send ``script``, statements separated by ``;``, on the psycopg ``connection`` through
    libpq (``psycopg.pq``) as one message, and return the rows of its last result that has
    rows, as text; raise its first error.

    Not through ``connection.execute()``: psycopg drops its whole cache of prepared statements
    whenever a command's status is ROLLBACK, so every test would start with no prepared
    statement (the app's queries are prepared from their fifth run on). Undoing a test does
    not invalidate them (the server keeps prepared statements across transactions): a plan
    whose tables changed is planned again by the server itself. Nothing else uses the
    connection meanwhile: the test is over. Cancelled half-way, the connection is left in the
    middle of the reply: the caller discards it.
    """
    pgconn = connection.pgconn
    pgconn.send_query(script.encode())
    while pgconn.flush():
        await anyio.wait_writable(pgconn.socket)
    rows: list[tuple[str, ...]] = []
    error: str | None = None
    while True:
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                if error is not None:
                    raise RuntimeError(f"The kit's statements between two tests failed: {error}")
                return rows
            if result.status == pq.ExecStatus.TUPLES_OK:
                rows = [
                    tuple(
                        (value or b"").decode()
                        for value in (
                            result.get_value(row, column) for column in range(result.nfields)
                        )
                    )
                    for row in range(result.ntuples)
                ]
            elif result.status != pq.ExecStatus.COMMAND_OK and error is None:
                error = (result.error_message or b"").decode(errors="replace").strip()
        await anyio.wait_readable(pgconn.socket)
