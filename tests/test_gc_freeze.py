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
import atexit
import gc

import pytest


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    # After the kit's unconfigure and pytest's own end-of-session garbage collection pass.
    print(f"\\nFROZEN AFTER UNCONFIGURE: {gc.get_freeze_count() > 0}")


# After pytest.main() returned: by then the kit's cleanup has undone the session's freeze.
atexit.register(lambda: print(f"FROZEN AT EXIT: {gc.get_freeze_count()}"))
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
    # Still frozen through pytest's last full passes (which then skip it), thawed after.
    result.stdout.fnmatch_lines([f"FROZEN AFTER UNCONFIGURE: {frozen}", "FROZEN AT EXIT: 0"])
