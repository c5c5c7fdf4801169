"""Warning classes of the kit's diagnostics, so that ``filterwarnings`` can select them."""

from __future__ import annotations


class TestkitWarning(UserWarning):
    """Base of the kit's diagnostic warnings."""

    __test__ = False  # not a test class, whatever pytest's naming rules say


class LeakedTaskWarning(TestkitWarning):
    """A task started during a test was still running after it (``testkit_leaked_tasks``)."""


class BlockedLoopWarning(TestkitWarning):
    """Code held the event loop longer than ``testkit_blocked_loop`` during a test."""
