"""A diagnostic pytest plugin: timestamps of a run's phases (used by fixed_cost.py --profile).

Loaded with ``-p bench_marks`` (before the kit, which is an entry-point plugin); appends
``name wall-clock-seconds`` lines to $BENCH_MARKS_FILE. The hooks are tryfirst/trylast or
wrappers so that they bracket every other plugin's implementation (the kit's among them):

* ``plugin_imported``: this module was imported (pytest and the -p plugins are in);
* ``initial_conftests_start``/``_end``: around ``pytest_load_initial_conftests``, where the
  kit prepares the database when ``testkit_database_env`` is set, and conftest.py files are
  imported;
* ``configure_first``/``configure_last``: around every ``pytest_configure``;
* ``collection_start``/``_end``, ``runtestloop_start``/``_end``, ``sessionfinish_start``/``_end``;
* ``unconfigure_first``/``unconfigure_last``: around every ``pytest_unconfigure`` (the kit drops
  its databases and stops its server there);
* ``atexit``: this module's exit handler, registered first and so run last of the handlers
  registered by plugins (the kit's own exit handlers run before it).
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Generator

import pytest

_PATH = os.environ.get("BENCH_MARKS_FILE")


def mark(name: str) -> None:
    if _PATH:
        with open(_PATH, "a") as out:
            out.write(f"{name} {time.time():.6f}\n")


mark("plugin_imported")
atexit.register(mark, "atexit")


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests() -> Generator[None, None, None]:
    mark("initial_conftests_start")
    try:
        return (yield)
    finally:
        mark("initial_conftests_end")


@pytest.hookimpl(tryfirst=True)
def pytest_configure() -> None:
    mark("configure_first")


@pytest.hookimpl(wrapper=True)
def pytest_collection() -> Generator[None, object, object]:
    mark("collection_start")
    try:
        return (yield)
    finally:
        mark("collection_end")


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop() -> Generator[None, object, object]:
    mark("runtestloop_start")
    try:
        return (yield)
    finally:
        mark("runtestloop_end")


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish() -> Generator[None, None, None]:
    mark("sessionfinish_start")
    try:
        return (yield)
    finally:
        mark("sessionfinish_end")


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure() -> None:
    mark("unconfigure_first")


class _Last:
    """A second plugin object: pytest allows one implementation of a hook per plugin."""

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self) -> None:
        mark("configure_last")

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self) -> None:
        mark("unconfigure_last")


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.register(_Last(), "bench_marks_last")
