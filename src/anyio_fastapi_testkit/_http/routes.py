"""The dependencies an app's routes use: the one place the kit reads FastAPI's route tree.

FastAPI has no public way to ask which dependencies an app uses. The kit asks it once per
session, to tell a user whose ``testkit_session_dependency`` names a function no route uses
(overriding it would change nothing, and the app would reach its own database). What it
reads, and why each is needed:

* ``app.routes`` / ``router.routes`` and Starlette's ``Mount``/``Host`` (public): routes and
  mounted sub-apps.
* ``route.dependant`` (FastAPI's ``APIRoute``/``APIWebSocketRoute``; public attribute, its
  ``call`` and ``dependencies`` fields are FastAPI's ``Dependant`` dataclass): the dependency
  tree of a route.
* ``original_router`` and ``include_context.dependencies`` (FastAPI 0.137+): ``include_router``
  no longer copies the routes into the app; the app holds a lazily resolved object that
  names the included router. Older releases copy the routes, which the walk finds directly.
* ``dependencies`` of routers and include contexts: lists of ``Depends(...)`` whose
  ``dependency`` is the function.

The walk follows these attributes wherever they appear, so a renamed wrapper class does not
break it; ``tests/test_app_dependencies.py`` builds the app shapes real projects use (routers
nested with prefixes, router-level dependencies, mounted sub-apps, a DI container's bound
method) and fails the day a FastAPI release hides them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from starlette.routing import Host, Mount

_CHILDREN = ("routes", "router", "original_router", "include_context")


def route_dependencies(app: object) -> Iterator[Callable[..., Any]]:
    """Every dependency callable the app's routes use, at any depth (duplicates possible)."""
    seen: set[int] = set()
    pending: list[object] = [app]
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, (list, tuple)):
            pending.extend(node)
            continue
        dependant = getattr(node, "dependant", None)
        if dependant is not None:
            yield from _dependant_calls(dependant)
        yield from _declared(node)
        if isinstance(node, (Mount, Host)):
            pending.append(node.app)
        pending.extend(
            child
            for child in (getattr(node, name, None) for name in _CHILDREN)
            if child is not None
        )


def _declared(node: object) -> Iterator[Callable[..., Any]]:
    """The functions of ``dependencies=[Depends(f), ...]`` on a router or include context."""
    declared = getattr(node, "dependencies", None)
    if not isinstance(declared, (list, tuple)):
        return
    for depends in declared:
        function = getattr(depends, "dependency", None)
        if function is not None:
            yield function


def _dependant_calls(root: object) -> Iterator[Callable[..., Any]]:
    pending = [root]
    while pending:
        dependant = pending.pop()
        call = getattr(dependant, "call", None)
        if call is not None:
            yield call
        pending.extend(getattr(dependant, "dependencies", ()))
