"""Explanations added to failure reports whose error is a symptom of the event loop trap."""

from __future__ import annotations

import re

from .._core.errors import exception_chain

# (pattern in the error text, the likely cause in the user's set-up and the fix)
_EVENT_LOOP_TRAP: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"attached to a different loop|bound to a different event loop"),
        "An object made on one event loop (a connection pool, an engine, a lock, a client) "
        "was used on another. Usual causes: an engine or client created at import time or in "
        "a session fixture that does not depend on `anyio_backend`, or pytest-asyncio still "
        "giving some tests a loop of their own. Fix: build loop-bound objects in fixtures that "
        "depend on `anyio_backend` (the kit's db_engine does), or dispose the app's "
        "import-time engine in its lifespan shutdown; remove pytest-asyncio's loop settings.",
    ),
    (
        re.compile(r"another operation is in progress|concurrent operations are not permitted"),
        "Two tasks used one connection or one session at the same time. Usual causes: "
        "concurrent requests sharing a session the kit does not serialise (an engine of the "
        "app's own, not the test's db_session), or a background task still using the session "
        "after the request ended. Fix: let the app get its session from "
        "testkit_session_dependency (the kit serialises requests on it), or give each task "
        "its own session.",
    ),
    (
        re.compile(r"Event loop is closed"),
        "Something ran on an event loop that had already been closed: usually a connection "
        "pool or client created during an earlier test's loop and reused later (module-level "
        "engines, pytest-asyncio's per-test loops). Fix: create it in a fixture that depends "
        "on `anyio_backend`, or dispose it in the app's lifespan shutdown.",
    ),
    (
        re.compile(r"no running event loop"),
        "Code that needs an asyncio loop ran where none is running: on trio (psycopg's and "
        "asyncpg's async drivers are asyncio only) or in a sync test or fixture. Fix: run the "
        "test on asyncio (testkit_backends), use db_session_sync on trio, or make it async.",
    ),
)


def explain(error_text: str) -> str | None:
    """The explanation for an error text showing the event loop trap, if it shows one."""
    for pattern, explanation in _EVENT_LOOP_TRAP:
        if pattern.search(error_text):
            return explanation
    return None


def explain_exception(error: BaseException) -> str | None:
    """The explanation for a failure showing the event loop trap, if it shows one.

    Reads the type and message of the error and of every exception linked to it (causes,
    contexts, members of exception groups), which is what the trap's symptoms are recognised
    by: no traceback is rendered, so a failing test's report costs what it would without the
    kit.
    """
    return explain("\n".join(_messages(error)))


def _messages(error: BaseException) -> list[str]:
    texts: list[str] = []
    for current in exception_chain(error):
        try:
            texts.append(f"{type(current).__name__}: {current}")
        except Exception:  # an exception whose str() fails says nothing of the trap
            texts.append(type(current).__name__)
    return texts
