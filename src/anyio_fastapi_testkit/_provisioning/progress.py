"""One line on the terminal saying what the kit is doing, when getting the database ready is slow.

Starting a server, building a template with Alembic, copying a large one: a run can sit for
seconds before its first test (before collection, when ``testkit_database_env`` is set) with
nothing on the screen. Once that has taken ``NOTICE_AFTER`` seconds, the kit says which step it
is at (``anyio-fastapi-testkit: building the template database (alembic upgrade head)…``),
and each later step on a line of its own; a fast start prints nothing.

The line goes past pytest's output capture (``CaptureManager.global_and_fixture_disabled``, as
pytest's live logging does), through the terminal reporter when there is one yet. Not in
pytest-xdist's workers, whose output is not the terminal's.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pytest

NOTICE_AFTER = 1.0  # seconds
PREFIX = "anyio-fastapi-testkit: "


def terminal_line(config: pytest.Config) -> Callable[[str], None] | None:
    """A function that writes one line on the terminal of this pytest run (None: no terminal,
    as in an xdist worker)."""
    if hasattr(config, "workerinput"):
        return None
    manager = config.pluginmanager

    def say(text: str) -> None:
        capture: Any = manager.get_plugin("capturemanager")
        reporter: Any = manager.get_plugin("terminalreporter")
        uncaptured = (
            capture.global_and_fixture_disabled()
            if capture is not None
            else contextlib.nullcontext()
        )
        with uncaptured:
            if reporter is not None:
                reporter.write_line(PREFIX + text)
            else:  # before pytest_configure: no reporter yet
                sys.stderr.write(PREFIX + text + "\n")
                sys.stderr.flush()

    return say


class Progress:
    """The steps of getting the database ready; said on the terminal once they have taken
    ``after`` seconds in all: the step at that moment, then each later one. A context manager
    around the whole; ``say`` None: silent."""

    def __init__(self, say: Callable[[str], None] | None, after: float = NOTICE_AFTER) -> None:
        self._say = say
        self._after = after
        self._lock = threading.Lock()
        self._step: str | None = None
        self._shown = False
        self._done = threading.Event()
        self._timer: threading.Thread | None = None

    def step(self, text: str) -> None:
        """The kit is now doing this (``building the template database (...)``)."""
        with self._lock:
            self._step = text
            if self._shown:
                self._show()

    def __enter__(self) -> Progress:
        if self._say is not None:
            self._timer = threading.Thread(
                target=self._notice, name="testkit-progress", daemon=True
            )
            self._timer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        if self._timer is not None:
            # Joined, so that the line is never written (nor capture toggled) once the caller
            # has gone on.
            self._timer.join()

    def _notice(self) -> None:
        if self._done.wait(self._after):
            return
        with self._lock:
            if not self._done.is_set():
                self._shown = True
                self._show()

    def _show(self) -> None:
        if self._say is not None and self._step is not None:
            with contextlib.suppress(Exception):  # a line lost is no reason to fail the run
                self._say(f"{self._step}…")
