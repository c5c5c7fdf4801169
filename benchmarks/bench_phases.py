"""A diagnostic pytest plugin: where each test's time goes (used by profile_kit.py).

Loaded with ``-p bench_phases``; writes JSON to $BENCH_PHASES_FILE at the end:

* ``phases``: total seconds of the setup, call and teardown phases (pytest's own durations)
  and of the whole per-test protocol (``protocol``, which also covers reporting hooks);
* ``fixtures``: per fixture name, its own (exclusive) setup and teardown seconds, summed over
  the session, and how many times it was set up. Nested work, such as a fixture body calling
  ``request.getfixturevalue()``, is charged to the inner fixture.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from typing import Any

import pytest
from _pytest.fixtures import FixtureDef

_stack: list[list[float]] = []  # [start, seconds spent in nested timed blocks]
_fixtures: dict[str, dict[str, Any]] = defaultdict(
    lambda: {"setup": 0.0, "teardown": 0.0, "count": 0, "scope": ""}
)
_phases: dict[str, float] = defaultdict(float)
_items = 0


def _start() -> list[float]:
    frame = [time.perf_counter(), 0.0]
    _stack.append(frame)
    return frame


def _stop(frame: list[float]) -> float:
    _stack.pop()
    elapsed = time.perf_counter() - frame[0]
    if _stack:
        _stack[-1][1] += elapsed
    return elapsed - frame[1]


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    frame = _start()
    try:
        return (yield)
    finally:
        entry = _fixtures[fixturedef.argname]
        entry["setup"] += _stop(frame)
        entry["count"] += 1
        entry["scope"] = fixturedef.scope


_original_finish = FixtureDef.finish


def _timed_finish(self: FixtureDef[Any], request: Any) -> None:
    frame = _start()
    try:
        _original_finish(self, request)
    finally:
        _fixtures[self.argname]["teardown"] += _stop(frame)


FixtureDef.finish = _timed_finish  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    global _items
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        _phases["protocol"] += time.perf_counter() - start
        _items += 1


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _phases[report.when] += report.duration


def pytest_unconfigure(config: pytest.Config) -> None:
    path = os.environ.get("BENCH_PHASES_FILE")
    if path:
        with open(path, "w") as out:
            json.dump({"items": _items, "phases": _phases, "fixtures": _fixtures}, out)
