"""The one-round-trip script that ends a test on the shared connection, through libpq.

Why it exists: after each test the kit sends ``ROLLBACK; BEGIN`` and the leak check's count
to the server as one message and reads one reply. Sent through psycopg's own
``connection.execute()`` it would cost the app its prepared statements (see ``ScriptReply``),
and sent as separate statements it would cost a round trip each. What it saves per test is
measured in ``benchmarks/`` (figures in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import select
from typing import Any

import anyio

from .._core.clock import now


class ScriptReply:
    """The reply to a script of statements sent on a psycopg connection through libpq
    (``psycopg.pq``): the rows of its last result that has rows, as text, or its first error.

    Not through ``connection.execute()``: psycopg drops its whole cache of prepared statements
    whenever a command's status is ROLLBACK, so every test would start with no prepared
    statement (the app's queries are prepared from their fifth run on). Undoing a test does
    not invalidate them (the server keeps prepared statements across transactions): a plan
    whose tables changed is planned again by the server itself. Nothing else uses the
    connection meanwhile: the test is over.

    The reply can be awaited on the loop (``wait``) or waited for outside it
    (``wait_blocking``): the kit sends the script that ends a test at the end of the test's
    call and reads the reply in the fixture's teardown, so that pytest's reporting of the call
    runs while the server works, instead of the test waiting for it.
    """

    __slots__ = ("_error", "_pgconn", "_rows")

    def __init__(self, pgconn: Any) -> None:
        self._pgconn = pgconn
        self._rows: list[tuple[Any, ...]] = []
        self._error: str | None = None

    @classmethod
    async def send(cls, connection: Any, script: str) -> ScriptReply:
        pgconn = connection.pgconn
        pgconn.send_query(script.encode())
        while pgconn.flush():
            await anyio.wait_writable(pgconn.socket)
        return cls(pgconn)

    def _take_arrived(self) -> bool:
        """Read what the server has sent so far; True once the whole reply is in."""
        from psycopg import pq

        pgconn = self._pgconn
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                return True
            if result.status == pq.ExecStatus.TUPLES_OK:
                self._rows = [
                    tuple(
                        (value or b"").decode()
                        for value in (
                            result.get_value(row, column) for column in range(result.nfields)
                        )
                    )
                    for row in range(result.ntuples)
                ]
            elif result.status != pq.ExecStatus.COMMAND_OK and self._error is None:
                self._error = (result.error_message or b"").decode(errors="replace").strip()
        return False

    def _outcome(self) -> list[tuple[Any, ...]]:
        if self._error is not None:
            raise RuntimeError(f"The kit's statements between two tests failed: {self._error}")
        return self._rows

    async def wait(self) -> list[tuple[Any, ...]]:
        while not self._take_arrived():
            await anyio.wait_readable(self._pgconn.socket)
        return self._outcome()

    def wait_blocking(self, timeout: float | None) -> list[tuple[Any, ...]]:
        """As ``wait()``, off the loop; raises TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else now() + timeout
        while not self._take_arrived():
            remaining = None if deadline is None else deadline - now()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            select.select([self._pgconn.socket], [], [], remaining)
        return self._outcome()
