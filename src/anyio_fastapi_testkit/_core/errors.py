"""Exceptions raised by the kit; every message says what was checked and how to fix it."""

from __future__ import annotations

import sys
from collections.abc import Iterator

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

# Enough for any real chain; a cycle or a huge group is cut off there.
_MOST_LINKS = 50


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, its causes and contexts and the members of exception groups, each once."""
    seen: set[int] = set()
    pending = [error]
    while pending and len(seen) < _MOST_LINKS:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(
            linked for linked in (current.__cause__, current.__context__) if linked is not None
        )


class TestkitError(Exception):
    """Base class of the kit's own errors."""

    __test__ = False  # not a test class, despite the name


class ConfigError(TestkitError):
    """A setting is wrong; the message names the setting and how to fix it."""


class AppError(TestkitError):
    """The app could not be imported, or its lifespan failed or timed out."""


class DatabaseError(TestkitError):
    """The database server or a test database could not be provided."""
