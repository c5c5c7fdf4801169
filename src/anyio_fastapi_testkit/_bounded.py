"""Bounded waits on the server for sync connections: a server that stops answering (SIGSTOP,
a frozen host) keeps its TCP connections open, so a blocked read would wait forever, and a
blocked sync call cannot be cancelled. The kit's watchdog thread shuts the socket down at
the limit instead; the blocked read returns at once and psycopg raises OperationalError.

``fileno()`` is psycopg's public API for the connection's socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

import psycopg

from ._watchdog import call_later

# Seconds one statement of the kit's own admin work may wait for the server when no
# testkit_timeout applies: generous for copying a large template, and still a bound.
ADMIN_WAIT = 120.0


def shut_down_socket(connection: Any) -> None:
    """Shut down the socket of a psycopg connection: a call blocked reading it returns with
    an error, whatever thread it runs on (closing the descriptor instead would not be safe)."""
    with socket.socket(fileno=os.dup(connection.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


class BoundedConnection(psycopg.Connection[tuple[Any, ...]]):
    """A psycopg connection whose every ``execute`` waits at most ``limit`` seconds."""

    limit: float = ADMIN_WAIT

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        timer = call_later(self.limit, self._cut)
        try:
            return super().execute(*args, **kwargs)
        finally:
            timer.cancel()

    def _cut(self) -> None:
        # On the watchdog thread: a connection closed meanwhile has no socket to shut.
        if not self.closed:
            with contextlib.suppress(OSError, psycopg.Error):
                shut_down_socket(self)
