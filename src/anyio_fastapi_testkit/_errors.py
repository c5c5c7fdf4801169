"""Exceptions raised by the kit; every message says what was checked and how to fix it."""

from __future__ import annotations


class TestkitError(Exception):
    """Base class of the kit's own errors."""

    __test__ = False  # not a test class, despite the name


class ConfigError(TestkitError):
    """A setting is wrong; the message names the setting and how to fix it."""


class AppError(TestkitError):
    """The app could not be imported, or its lifespan failed or timed out."""


class DatabaseError(TestkitError):
    """The database server or a test database could not be provided."""
