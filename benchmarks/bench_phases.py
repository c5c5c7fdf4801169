"""A diagnostic pytest plugin: where each test's time goes (used by profile_kit.py).

Loaded with ``-p bench_phases``; writes JSON to $BENCH_PHASES_FILE at the end:

* ``phases``: total wall seconds of collection, of the test loop (``runtestloop``), of the
  setup, call and teardown phases and of the whole per-test protocol (``protocol``, which
  also covers reporting hooks), and the same in CPU seconds of this process (``cpu_setup``
  ...);
* ``fixtures``: per fixture name, its own (exclusive) setup and teardown seconds, wall and
  CPU, summed over the session, and how many times it was set up. Nested work, such as a
  fixture body calling ``request.getfixturevalue()``, is charged to the inner fixture.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from typing import Any

import pytest
from _pytest.fixtures import FixtureDef

# [wall start, cpu start, wall in nested timed blocks, cpu in nested timed blocks]
_stack: list[list[float]] = []
_fixtures: dict[str, dict[str, Any]] = defaultdict(
    lambda: {
        "setup": 0.0,
        "teardown": 0.0,
        "cpu_setup": 0.0,
        "cpu_teardown": 0.0,
        "count": 0,
        "scope": "",
    }
)
_phases: dict[str, float] = defaultdict(float)
_items = 0


def _start() -> list[float]:
    frame = [time.perf_counter(), time.process_time(), 0.0, 0.0]
    _stack.append(frame)
    return frame


def _stop(frame: list[float]) -> tuple[float, float]:
    """(own wall seconds, own CPU seconds) of a timed block."""
    _stack.pop()
    wall = time.perf_counter() - frame[0]
    cpu = time.process_time() - frame[1]
    if _stack:
        _stack[-1][2] += wall
        _stack[-1][3] += cpu
    return wall - frame[2], cpu - frame[3]


def _add(entry: dict[str, Any], key: str, frame: list[float]) -> None:
    wall, cpu = _stop(frame)
    entry[key] += wall
    entry[f"cpu_{key}"] += cpu


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    frame = _start()
    try:
        return (yield)
    finally:
        entry = _fixtures[fixturedef.argname]
        _add(entry, "setup", frame)
        entry["count"] += 1
        entry["scope"] = fixturedef.scope


_original_finish = FixtureDef.finish


def _timed_finish(self: FixtureDef[Any], request: Any) -> None:
    frame = _start()
    try:
        _original_finish(self, request)
    finally:
        _add(_fixtures[self.argname], "teardown", frame)


FixtureDef.finish = _timed_finish  # type: ignore[method-assign]


def _phase(name: str, start: tuple[float, float]) -> None:
    _phases[name] += time.perf_counter() - start[0]
    _phases[f"cpu_{name}"] += time.process_time() - start[1]


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection(session: pytest.Session) -> Any:
    start = _now()
    try:
        return (yield)
    finally:
        _phase("collection", start)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> Any:
    start = _now()
    try:
        return (yield)
    finally:
        _phase("runtestloop", start)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    global _items
    start = _now()
    try:
        return (yield)
    finally:
        _phase("protocol", start)
        _items += 1


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    start = _now()
    try:
        return (yield)
    finally:
        _phase("setup", start)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    start = _now()
    try:
        return (yield)
    finally:
        _phase("call", start)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    start = _now()
    try:
        return (yield)
    finally:
        _phase("teardown", start)


def pytest_unconfigure(config: pytest.Config) -> None:
    path = os.environ.get("BENCH_PHASES_FILE")
    if path:
        with open(path, "w") as out:
            json.dump({"items": _items, "phases": _phases, "fixtures": _fixtures}, out)
