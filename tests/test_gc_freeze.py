"""testkit_gc_freeze: what is alive after collection is frozen for the tests, and thawed after."""

from __future__ import annotations

import pytest
from conftest import Project

TESTS = """
import gc

async def test_async():
    assert (gc.get_freeze_count() > 0) is FROZEN

def test_sync():
    assert (gc.get_freeze_count() > 0) is FROZEN
"""

UNFREEZE_CHECK = """
import gc

import pytest


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    # After the kit's own unconfigure: the session's freeze is undone.
    print(f"\\nFROZEN AT THE END: {gc.get_freeze_count()}")
"""


@pytest.mark.parametrize(
    ("setting", "frozen"), [(None, True), ("true", True), ("false", False)], ids=str
)
def test_objects_alive_after_collection_are_frozen_during_the_tests(
    project: Project, setting: str | None, frozen: bool
) -> None:
    project.ini(**({} if setting is None else {"testkit_gc_freeze": setting}))
    project.module("test_gc", TESTS.replace("FROZEN", str(frozen)))
    project.module("conftest", UNFREEZE_CHECK)
    result = project.run("-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["FROZEN AT THE END: 0"])
