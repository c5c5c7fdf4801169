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

from .._core.clock import call_later
from .._core.errors import DatabaseError
from .limits import admin_limit


def shut_down_socket(connection: Any) -> None:
    """Shut down the socket of a psycopg connection: a call blocked reading it returns with
    an error, whatever thread it runs on (closing the descriptor instead would not be safe)."""
    with socket.socket(fileno=os.dup(connection.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


class BoundedConnection(psycopg.Connection[tuple[Any, ...]]):
    """A psycopg connection whose every ``execute`` waits at most ``limit`` seconds (default:
    testkit_timeout, else ``ADMIN_WAIT``); past it, ``DatabaseError`` names the server."""

    limit: tuple[float, str] | None = None

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        seconds, setting = self.limit or admin_limit()
        cut: list[bool] = []
        timer = call_later(seconds, lambda: self._cut(cut))
        try:
            return super().execute(*args, **kwargs)
        except psycopg.OperationalError:
            if not cut:
                raise
            raise DatabaseError(
                f"The PostgreSQL server at {self.info.host}:{self.info.port} did not answer "
                f"within {seconds:g} s ({setting}); the kit closed its connection. Fix: find "
                "out why the server hangs (its log, its host's load); or raise that limit."
            ) from None
        finally:
            timer.cancel()

    def _cut(self, cut: list[bool]) -> None:
        # On the watchdog thread: a connection closed meanwhile has no socket to shut.
        if not self.closed:
            cut.append(True)
            with contextlib.suppress(OSError, psycopg.Error):
                shut_down_socket(self)
