"""anyio-fastapi-testkit: test async FastAPI apps on one event loop per backend, with anyio.

The fixtures come from the pytest plugin (see ``pytest --fixtures``); this module holds the
few helpers meant for import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._core.errors import AppError, ConfigError, DatabaseError, TestkitError
from ._core.warnings import BlockedLoopWarning, LeakedTaskWarning, TestkitWarning

if TYPE_CHECKING:
    from ._http.client import ClientFactory, override_dependencies
    from ._http.websocket import WebSocketClosed, WebSocketRejected
    from ._isolation.factories import persist_with

# Imported on first use: pytest imports this package to load the plugin in every process,
# pytest-xdist's controller too, which runs no test and need not pay for SQLAlchemy's ORM.
_LAZY = {
    "ClientFactory": "._http.client",
    "override_dependencies": "._http.client",
    "persist_with": "._isolation.factories",
    "WebSocketClosed": "._http.websocket",
    "WebSocketRejected": "._http.websocket",
}

__all__ = [
    "AppError",
    "BlockedLoopWarning",
    "ClientFactory",
    "ConfigError",
    "DatabaseError",
    "LeakedTaskWarning",
    "TestkitError",
    "TestkitWarning",
    "WebSocketClosed",
    "WebSocketRejected",
    "override_dependencies",
    "persist_with",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
