"""anyio-fastapi-testkit: test async FastAPI apps on one event loop per backend, with anyio.

The fixtures come from the pytest plugin (see ``pytest --fixtures``); this module holds the
few helpers meant for import, and the types of what the fixtures give, for annotations
(``def test_x(count_queries: QueryCounter) -> None``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._core.errors import AppError, ConfigError, DatabaseError, TestkitError
from ._core.warnings import BlockedLoopWarning, LeakedTaskWarning, TestkitWarning

if TYPE_CHECKING:
    # The type checker sees the real names, so that a name the package does not export is an
    # error; at run time they are imported on first use (see __getattr__ below).
    from ._diagnostics.queries import QueryCounter, QueryLimit, QueryLog
    from ._http.client import ClientFactory, ClientOptions, override_dependencies
    from ._http.websocket import (
        WebSocketClosed,
        WebSocketConnect,
        WebSocketRejected,
        WebSocketSession,
    )
    from ._isolation.factories import persist_with
    from ._postgres.cache import CacheWarning
    from ._provisioning.foreign_guard import ForeignDatabaseError

# Imported on first use: pytest imports this package to load the plugin in every process,
# pytest-xdist's controller too, which runs no test and need not pay for SQLAlchemy's ORM.
# Keep in step with the TYPE_CHECKING imports above (tests/test_public_api.py and
# tests/test_typing.py check both).
_LAZY = {
    "CacheWarning": "._postgres.cache",
    "ClientFactory": "._http.client",
    "ClientOptions": "._http.client",
    "ForeignDatabaseError": "._provisioning.foreign_guard",
    "QueryCounter": "._diagnostics.queries",
    "QueryLimit": "._diagnostics.queries",
    "QueryLog": "._diagnostics.queries",
    "WebSocketClosed": "._http.websocket",
    "WebSocketConnect": "._http.websocket",
    "WebSocketRejected": "._http.websocket",
    "WebSocketSession": "._http.websocket",
    "override_dependencies": "._http.client",
    "persist_with": "._isolation.factories",
}

__all__ = [
    "AppError",
    "BlockedLoopWarning",
    "CacheWarning",
    "ClientFactory",
    "ClientOptions",
    "ConfigError",
    "DatabaseError",
    "ForeignDatabaseError",
    "LeakedTaskWarning",
    "QueryCounter",
    "QueryLimit",
    "QueryLog",
    "TestkitError",
    "TestkitWarning",
    "WebSocketClosed",
    "WebSocketConnect",
    "WebSocketRejected",
    "WebSocketSession",
    "override_dependencies",
    "persist_with",
]
__version__ = "0.1.0"

if not TYPE_CHECKING:
    # Hidden from the type checker: a module __getattr__ would make every name type-check.

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
