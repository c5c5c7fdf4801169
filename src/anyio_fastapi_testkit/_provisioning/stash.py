"""Where the run's test databases are kept on pytest's config.

A module of its own, importing nothing of the database stack: the kit's report hook asks for
the databases after every failing test, also in runs that never made any, which so need not
load SQLAlchemy and psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .run_databases import TestDatabases

DATABASES_KEY: pytest.StashKey[TestDatabases] = pytest.StashKey()


def current_test_databases(config: pytest.Config) -> TestDatabases | None:
    """The run's databases, if a test or the plugin has asked for them (never builds them)."""
    return config.stash.get(DATABASES_KEY, None)
