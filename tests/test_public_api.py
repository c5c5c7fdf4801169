"""The package's public names: each resolves, the heavy ones only when first used."""

from __future__ import annotations

import subprocess
import sys

import pytest

import anyio_fastapi_testkit as kit


def test_every_public_name_resolves() -> None:
    from anyio_fastapi_testkit._http import client as _client
    from anyio_fastapi_testkit._http import websocket as _websocket
    from anyio_fastapi_testkit._isolation import factories as _factories

    assert {name for name in kit.__all__ if not hasattr(kit, name)} == set()
    assert kit.persist_with is _factories.persist_with
    assert kit.override_dependencies is _client.override_dependencies
    assert kit.WebSocketClosed is _websocket.WebSocketClosed
    assert set(kit.__all__) <= set(dir(kit))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        kit.nothing_here  # noqa: B018


def test_loading_the_plugin_loads_no_database_library() -> None:
    # pytest loads the plugin in every process, pytest-xdist's controller too, which needs
    # neither SQLAlchemy nor psycopg before it has started the workers.
    code = (
        "import sys, anyio_fastapi_testkit.plugin; "
        "print(sorted(m for m in ('sqlalchemy', 'psycopg', 'fastapi', 'httpx') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_fixtures_module_makes_its_conftest_copies_on_access() -> None:
    from anyio_fastapi_testkit import fixtures

    # Not module attributes (the plugin registers only its bound copies), yet importable.
    assert "app" not in vars(fixtures)
    assert fixtures.app.__name__ == "app"
    assert "The app under test" in (fixtures.app.__doc__ or "")
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        fixtures.nothing_here  # noqa: B018
