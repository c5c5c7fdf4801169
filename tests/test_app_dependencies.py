"""testkit_session_dependency is found in the app shapes real projects use, on the installed
FastAPI (in-process: the check reads the app, it needs no pytest sub-session).

These tests break the day a FastAPI release hides its routes from the walk in _http/routes.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import APIRouter, Depends, FastAPI, WebSocket

from anyio_fastapi_testkit._core.errors import ConfigError
from anyio_fastapi_testkit._http.app import check_uses_dependency, uses_dependency


def get_session() -> Iterator[str]:
    yield "session"


def other() -> Iterator[str]:
    yield "other"


class Container:
    """A DI container whose bound method is the session dependency."""

    def session(self) -> Iterator[str]:
        yield "session"


def nested_app(dependency: object) -> FastAPI:
    """Routers three deep, each with a prefix, the dependency on the innermost route only."""
    items = APIRouter(prefix="/items", tags=["items"])

    @items.get("/{item_id}")
    async def read(item_id: int, session: str = Depends(dependency)) -> dict[str, str]:
        return {"session": session}

    v1 = APIRouter(prefix="/v1")
    v1.include_router(items)
    api = APIRouter(prefix="/api")
    api.include_router(v1)
    app = FastAPI()
    app.include_router(api)
    return app


def test_found_through_routers_nested_with_prefixes() -> None:
    assert uses_dependency(nested_app(get_session), get_session)
    assert not uses_dependency(nested_app(get_session), other)


def test_found_as_a_bound_method_of_a_module_level_container() -> None:
    container = Container()
    app = nested_app(container.session)
    # A new bound method at each access: equal, not identical, as dependency_overrides match.
    assert container.session is not container.session
    assert uses_dependency(app, container.session)
    assert not uses_dependency(app, Container().session)


def test_found_as_a_sub_dependency() -> None:
    def current_user(session: str = Depends(get_session)) -> str:
        return "user"

    assert uses_dependency(nested_app(current_user), get_session)


def test_found_in_router_and_include_dependencies() -> None:
    router = APIRouter(prefix="/r", dependencies=[Depends(get_session)])

    @router.get("/")
    async def plain() -> None:
        return None

    app = FastAPI()
    app.include_router(router)
    assert uses_dependency(app, get_session)

    included = APIRouter()

    @included.get("/x")
    async def x() -> None:
        return None

    app = FastAPI()
    app.include_router(included, prefix="/inc", dependencies=[Depends(other)])
    assert uses_dependency(app, other)
    assert not uses_dependency(app, get_session)


def test_found_in_a_mounted_sub_app_and_a_websocket_route() -> None:
    app = FastAPI()
    app.mount("/admin", nested_app(get_session))
    assert uses_dependency(app, get_session)

    router = APIRouter(prefix="/ws")

    @router.websocket("/feed")
    async def feed(websocket: WebSocket, session: str = Depends(other)) -> None:
        await websocket.close()

    ws_app = FastAPI()
    ws_app.include_router(router)
    assert uses_dependency(ws_app, other)


def test_an_unused_dependency_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="is not a dependency of any route") as raised:
        check_uses_dependency(nested_app(get_session), other, "pkg.db:other")
    assert "pkg.db:other" in str(raised.value)
    check_uses_dependency(nested_app(get_session), get_session, "pkg.db:get_session")
