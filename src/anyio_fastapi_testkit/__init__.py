"""anyio-fastapi-testkit: test async FastAPI apps on one event loop per backend, with anyio.

The fixtures come from the pytest plugin (see ``pytest --fixtures``); this module holds the
few helpers meant for import.
"""

from __future__ import annotations

from ._client import override_dependencies
from ._errors import AppError, ConfigError, DatabaseError, TestkitError
from ._factories import persist_with
from ._warnings import BlockedLoopWarning, LeakedTaskWarning, TestkitWarning
from ._websocket import WebSocketClosed, WebSocketRejected

__all__ = [
    "AppError",
    "BlockedLoopWarning",
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
