"""Count the SQL statements a block of a test sends, to catch N+1 queries in endpoints.

A listener on SQLAlchemy's ``Engine`` class sees every statement of every engine in the
process (the kit's engines, those of ``db_session_sync``, and engines the app built itself,
async ones included: an ``AsyncEngine`` runs on an ``Engine``). It is added when a block
starts and removed when the block ends.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.expression import (
    ReleaseSavepointClause,
    RollbackToSavepointClause,
    SavepointClause,
)

# The kit's own plumbing carries this execution option: the schema build's engine, and the
# statements of the per-test isolation that are not SQLAlchemy savepoint constructs.
NOT_COUNTED_OPTION: Final = "testkit_not_counted"
NOT_COUNTED: Final = {NOT_COUNTED_OPTION: True}

# The kit's isolation is made of savepoints, and in savepoint mode the app's commit() and
# rollback() become RELEASE / ROLLBACK TO SAVEPOINT: none of these reach the server in
# production, where BEGIN / COMMIT / ROLLBACK are not sent through a cursor either.
_TRANSACTION_CONTROL = (SavepointClause, ReleaseSavepointClause, RollbackToSavepointClause)

STATEMENT_WIDTH: Final = 200  # characters of each statement shown in a failure
SHOWN_STATEMENTS: Final = 50  # statements listed in a failure; the rest are counted
_SPACES = re.compile(r"\s+")

NOT_COUNTED_NOTE = (
    "Not counted: SAVEPOINT, RELEASE SAVEPOINT and ROLLBACK TO SAVEPOINT (the test's "
    "isolation, and what the app's commit() and begin_nested() become inside it), and the "
    "kit's own schema build and leak check."
)


@dataclass(frozen=True)
class Query:
    """One statement as sent to the database: its SQL text, never its values unless asked."""

    sql: str
    executemany: bool
    parameters: Any = None  # recorded only with show_parameters=True

    def short(self, width: int = STATEMENT_WIDTH) -> str:
        """The SQL on one line, cut to ``width`` characters."""
        text = _SPACES.sub(" ", self.sql).strip()
        return text if len(text) <= width else text[: width - 1] + "…"


class QueryLog(Sequence[Query]):
    """The statements run inside a ``count_queries()`` block, in order (filled as they run).

    ``len(queries)`` is the count; ``queries.statements`` their SQL texts.
    """

    def __init__(self, *, show_parameters: bool = False) -> None:
        self.show_parameters = show_parameters
        self._queries: list[Query] = []
        self._lock = threading.Lock()  # sync endpoints run in worker threads

    def __len__(self) -> int:
        return len(self._queries)

    def __getitem__(self, index: Any) -> Any:
        return self._queries[index]

    def __repr__(self) -> str:
        return f"<QueryLog of {len(self)} statements>"

    @property
    def statements(self) -> list[str]:
        return [query.sql for query in self._queries]

    def record(self, query: Query) -> None:
        with self._lock:
            self._queries.append(query)

    def listing(self) -> str:
        """The statements, numbered, one per line (values only with show_parameters)."""
        lines = []
        for number, query in enumerate(self._queries[:SHOWN_STATEMENTS], start=1):
            many = " (executemany)" if query.executemany else ""
            line = f"  {number}. {query.short()}{many}"
            if self.show_parameters:
                line += f"\n     parameters: {query.parameters!r}"
            lines.append(line)
        hidden = len(self._queries) - SHOWN_STATEMENTS
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
        return "\n".join(lines)


def _counted(conn: Connection, context: Any) -> bool:
    # The context's options include the statement's own, on top of the connection's.
    options = getattr(context, "execution_options", None) or conn.get_execution_options()
    if options.get(NOT_COUNTED_OPTION):
        return False
    compiled = getattr(context, "compiled", None)
    return not isinstance(getattr(compiled, "statement", None), _TRANSACTION_CONTROL)


class CountingBlock:
    """``with`` / ``async with``: count the statements sent while the block runs."""

    def __init__(self, log: QueryLog) -> None:
        self.log = log
        self._active = False

    def _listener(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if _counted(conn, context):
            kept = parameters if self.log.show_parameters else None
            self.log.record(Query(statement, executemany, kept))

    def start(self) -> QueryLog:
        if self._active:
            raise RuntimeError("this count_queries() block is already running")
        event.listen(Engine, "before_cursor_execute", self._listener)
        self._active = True
        return self.log

    def stop(self) -> None:
        if self._active:
            event.remove(Engine, "before_cursor_execute", self._listener)
            self._active = False

    def __enter__(self) -> QueryLog:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> QueryLog:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LimitBlock(CountingBlock):
    """A counting block that fails the test when its count breaks the limit."""

    def __init__(self, log: QueryLog, limit: int, *, exact: bool, fixture: str, test: str) -> None:
        super().__init__(log)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise TypeError(f"{fixture}() takes a number of statements >= 0, not {limit!r}")
        self.limit = limit
        self.exact = exact
        self.fixture = fixture
        self.test = test

    def check(self) -> None:
        count = len(self.log)
        if count > self.limit:
            self._fail(
                f"more than the {self.limit} allowed",
                "Fix: load related rows with the query (selectinload() / joinedload()) instead "
                "of one query per row (N+1), or batch the work; if the extra statements are "
                f"intended, raise the limit: {self.fixture}({count}).",
            )
        elif self.exact and count < self.limit:
            self._fail(
                f"fewer than the {self.limit} expected",
                f"Fix: if fewer statements is the new normal, lower the number: "
                f"{self.fixture}({count}).",
            )

    def _fail(self, comparison: str, fix: str) -> None:
        count = len(self.log)
        noun = "statement" if count == 1 else "statements"
        listing = self.log.listing() or "  (none)"
        values = (
            ""
            if self.log.show_parameters
            else " Bound values are not shown (they may hold secrets): "
            f"{self.fixture}({self.limit}, show_parameters=True) shows them."
        )
        pytest.fail(
            f"{self.test}: {count} SQL {noun} ran inside {self.fixture}({self.limit}), "
            f"{comparison}:\n{listing}\n{fix}{values}\n{NOT_COUNTED_NOTE}",
            pytrace=False,
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is None:
            self.check()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class _Blocks:
    """The blocks a fixture handed out, so that teardown can stop any a test left open."""

    def __init__(self) -> None:
        self._blocks: list[CountingBlock] = []

    def close(self) -> None:
        """Remove the listener of any block a test left open (an exception, a bare start())."""
        for block in self._blocks:
            block.stop()
        self._blocks.clear()


class QueryCounter(_Blocks):
    """The object ``count_queries`` gives: call it to open a counting block."""

    def __call__(self, *, show_parameters: bool = False) -> CountingBlock:
        block = CountingBlock(QueryLog(show_parameters=show_parameters))
        self._blocks.append(block)
        return block


class QueryLimit(_Blocks):
    """The object ``assert_max_queries`` / ``assert_num_queries`` give."""

    def __init__(self, *, exact: bool, fixture: str, test: str) -> None:
        super().__init__()
        self._exact = exact
        self._fixture = fixture
        self._test = test

    def __call__(self, limit: int, *, show_parameters: bool = False) -> LimitBlock:
        block = LimitBlock(
            QueryLog(show_parameters=show_parameters),
            limit,
            exact=self._exact,
            fixture=self._fixture,
            test=self._test,
        )
        self._blocks.append(block)
        return block
