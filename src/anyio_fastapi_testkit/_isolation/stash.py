"""Where the running test's transaction is kept on its item.

A module of its own, importing nothing of the database stack: the kit's hooks and fixtures
read the key for every test, including tests (and runs) that never touch the database, which
so need not load SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .transaction import TestTransaction

# The running test's transaction, on its item, from the transaction fixture's set-up to its
# teardown.
TRANSACTION_KEY: pytest.StashKey[TestTransaction] = pytest.StashKey()
