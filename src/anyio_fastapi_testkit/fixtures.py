"""The kit's public fixtures.

The plugin registers this module by itself. To pin the fixtures in a ``conftest.py`` (for
instance when plugin autoloading is disabled and the plugin is loaded with
``-p anyio_fastapi_testkit.plugin``), ``from anyio_fastapi_testkit.fixtures import *`` imports
exactly the fixtures below and no hooks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from ._app import ASGIApp, load_app, running_lifespan
from ._backends import backend_name, check_backend
from ._client import http_library, make_client, override_dependencies
from ._config import get_settings
from ._errors import AppError, ConfigError

__all__ = [
    "anyio_backend",
    "app",
    "app_lifespan",
    "client",
    "dependency_overrides",
]


@pytest.fixture(scope="session")
def anyio_backend(_testkit_backend: str) -> str:
    """The backend the current test runs on, from ``testkit_backends`` (default ``asyncio``).

    Session-scoped, so all tests of one backend share one event loop; pytest groups the tests
    by backend and builds the kit's per-backend fixtures once for each. Override it in
    conftest.py to pin a backend (``return "trio"``) or pass options
    (``return ("asyncio", {"use_uvloop": True})``). Cost: nothing per test.
    """
    return _testkit_backend


@pytest.fixture(scope="session")
async def _testkit_loop(anyio_backend: object) -> AsyncIterator[None]:
    # Holding a runner lease for the whole session keeps one event loop per backend alive
    # between tests; it is released when pytest moves on to the next backend.
    yield


@pytest.fixture
async def _testkit_backend_guard(anyio_backend: object, request: pytest.FixtureRequest) -> None:
    check_backend(backend_name(anyio_backend), request.node.nodeid)


@pytest.fixture(scope="session")
def app(request: pytest.FixtureRequest) -> ASGIApp:
    """The app under test, imported from the ``testkit_app`` ini option (session-scoped).

    ``"pkg.module:app"`` names an app; ``"pkg.module:create_app()"`` calls a factory once per
    session. Override this fixture in conftest.py to build the app yourself. Cost: one import
    per session.
    """
    settings = get_settings(request.config)
    if settings.app is None:
        raise ConfigError(
            "No app to test: set testkit_app in [tool.pytest.ini_options] "
            '(e.g. testkit_app = "myproject.main:app"), or override the `app` fixture in '
            "conftest.py."
        )
    try:
        return load_app(settings.app)
    except ConfigError:
        request.session.shouldstop = "testkit_app could not be loaded (see the first error)"
        raise


@pytest.fixture(scope="session")
async def app_lifespan(
    app: ASGIApp, anyio_backend: object, request: pytest.FixtureRequest
) -> AsyncIterator[ASGIApp]:
    """The app after its lifespan startup, ready for requests (session-scoped, per backend).

    Startup and shutdown run once per backend through asgi-lifespan; requests get a copy of
    the lifespan state. A failing or hung startup stops the session with the app's error.
    Limits: ``testkit_startup_timeout`` / ``testkit_shutdown_timeout``. Cost: one startup and
    one shutdown of the app per backend.
    """
    settings = get_settings(request.config)
    try:
        async with running_lifespan(
            app,
            startup_timeout=settings.startup_timeout,
            shutdown_timeout=settings.shutdown_timeout,
        ) as started:
            yield started
    except AppError:
        request.session.shouldstop = "the app's lifespan failed (see the first error)"
        raise


@pytest.fixture
async def client(
    app_lifespan: ASGIApp, anyio_backend: object, request: pytest.FixtureRequest
) -> AsyncIterator[Any]:
    """An ``httpx.AsyncClient`` (or ``httpx2.AsyncClient``) on the started app.

    Requests go in-process through an ASGI transport to ``http://testserver``, on the test's
    own event loop. A new client per test, so cookies and headers never leak between tests,
    while the app, its lifespan and its pools are shared. The library is httpx2 when installed,
    else httpx (``testkit_http_client`` chooses). Cost: building one client, well under 1 ms.
    """
    library = http_library(get_settings(request.config).http_client)
    async with make_client(library, app_lifespan) as http_client:
        yield http_client


@pytest.fixture
def dependency_overrides(
    app: ASGIApp,
) -> Iterator[dict[Callable[..., Any], Callable[..., Any]]]:
    """The app's ``dependency_overrides`` dict, restored to its previous state after the test.

    Set ``dependency_overrides[get_user] = fake_user`` in a test; whatever the test adds or
    removes is undone at teardown, also when the test fails. Cost: two dict copies.
    """
    with override_dependencies(app) as live:
        yield live
