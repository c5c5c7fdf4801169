"""Stacks for the diagnostics' reports: which frames are the test's and the app's own code."""

from __future__ import annotations

import functools
import inspect
import linecache
import os
import sys
import sysconfig
import traceback
from collections.abc import Iterable
from types import CodeType, FrameType, TracebackType

import pytest

# (code, line) pairs, innermost last: cheap to take, formatted only when something is reported.
Stack = list[tuple[CodeType, int]]


@functools.cache
def _kit_dir() -> str:
    package = sys.modules[__name__.split(".")[0]]
    return os.path.join(os.path.dirname(package.__file__ or __file__), "")


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    folders = {paths["stdlib"], paths["purelib"], paths["platlib"]}
    return (*(os.path.join(folder, "") for folder in folders), _kit_dir())


@functools.cache
def _machinery_dirs() -> tuple[str, ...]:
    names = ("anyio", "asyncio", __name__.split(".")[0], "trio", "pluggy")
    modules = [sys.modules.get(name) for name in names]
    folders = [os.path.dirname(m.__file__) + os.sep for m in modules if m and m.__file__]
    # The standard library's own frames (threading, queue, contextlib, selectors) are noise too.
    return (*folders, _pytest_dir(), os.path.join(sysconfig.get_paths()["stdlib"], ""))


def without_machinery(frames: list[FrameType]) -> list[FrameType]:
    """The frames that say where a task or thread waits: those of the event loop, pytest, the
    standard library and the kit are dropped. Unlike ``is_user_code``, installed libraries
    stay (a task waiting inside the database driver is worth seeing there)."""
    machinery = _machinery_dirs()
    return [f for f in frames if not f.f_code.co_filename.startswith(machinery)]


def is_kit_file(filename: str) -> bool:
    """Whether ``filename`` is a module of the kit itself."""
    return filename.startswith(_kit_dir())


@functools.cache
def _pytest_dir() -> str:
    # pytest.skip() and pytest.fail() raise from pytest's own package.
    return os.path.join(os.path.dirname(inspect.getfile(pytest.Item)), "")


def raised_by_the_kit(tb: TracebackType | None) -> bool:
    """Whether the kit raised the exception of ``tb``: its innermost frame outside pytest's
    own code (``pytest.skip()``, say) is the kit's."""
    innermost = None
    for frame, _ in traceback.walk_tb(tb):
        if not frame.f_code.co_filename.startswith(_pytest_dir()):
            innermost = frame
    return innermost is not None and is_kit_file(innermost.f_code.co_filename)


def last_line_in(tb: TracebackType | None, filename: str) -> int | None:
    """The line of the innermost frame of ``tb`` that runs code of ``filename`` (1-based)."""
    found = None
    for frame, lineno in traceback.walk_tb(tb):
        if frame.f_code.co_filename == filename:
            found = lineno
    return found


def is_user_code(code: CodeType) -> bool:
    """Code of the test or the app: not the standard library, an installed package or the kit."""
    filename = code.co_filename
    return not filename.startswith(_library_dirs()) and not filename.startswith("<")


def innermost_user_frame(stack: Stack) -> tuple[CodeType, int] | None:
    return next((entry for entry in reversed(stack) if is_user_code(entry[0])), None)


def format_stack(stack: Iterable[tuple[CodeType, int]]) -> str:
    lines = []
    for code, lineno in stack:
        lines.append(f'  File "{code.co_filename}", line {lineno}, in {code.co_name}')
        source = linecache.getline(code.co_filename, lineno).strip()
        if source:
            lines.append(f"    {source}")
    return "\n".join(lines)


def location(entry: tuple[CodeType, int] | None) -> str:
    return "(unknown place)" if entry is None else f"{entry[0].co_filename}:{entry[1]}"


def user_part(stack: Stack, *, keep_inner: bool = False) -> Stack:
    """The stack from the first to the last frame of user code (all of it if there is none);
    ``keep_inner`` keeps the library frames below the last one too (where a call blocks)."""
    marks = [i for i, (code, _) in enumerate(stack) if is_user_code(code)]
    if not marks:
        return stack
    return stack[marks[0] :] if keep_inner else stack[marks[0] : marks[-1] + 1]
