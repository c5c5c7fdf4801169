"""How long the kit's own sync statements may wait for the server (see ``bounded``); kept
apart from it so that the plugin sets it without loading psycopg (xdist's controller)."""

from __future__ import annotations

# Seconds one statement of the kit's own admin work may wait for the server when no
# testkit_timeout applies: generous for copying a large template, and still a bound.
ADMIN_WAIT = 120.0

# (seconds, the setting they come from): testkit_timeout once the run's settings are read.
_admin_limit: tuple[float, str] = (ADMIN_WAIT, "the kit's default for its own work")


def limit_admin_waits(seconds: float | None) -> None:
    """Bound each statement of the kit's own sync connections by ``testkit_timeout`` (None:
    by ``ADMIN_WAIT``); once per process, from the run's settings."""
    global _admin_limit
    if seconds is None:
        _admin_limit = (ADMIN_WAIT, "the kit's default for its own work")
    else:
        _admin_limit = (seconds, "testkit_timeout / --testkit-timeout")


def admin_limit() -> tuple[float, str]:
    """(seconds, the setting they come from) for one statement of the kit's admin work."""
    return _admin_limit
