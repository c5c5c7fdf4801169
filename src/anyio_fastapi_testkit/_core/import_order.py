"""Whether the app could have read its settings before ``testkit_database_env`` was set.

Apps read their settings from the environment once, at import (a module-level engine, a
cached ``get_settings()``). The kit sets the variables before pytest imports any conftest.py
file; a module of the app's package imported before that (by a plugin, or by a conftest.py
when the kit itself was loaded from ``pytest_plugins``) has already seen the shell's values,
and the app would run on them, however right the kit's own fixtures are. The kit then stops
the run instead.
"""

from __future__ import annotations

import sys

import pytest

from .config import ALEMBIC_PREFIX, Settings

_OWN_PACKAGE = __name__.partition(".")[0]


def _packages(settings: Settings) -> list[str]:
    """The top-level packages of the app's modules named by the settings."""
    paths = [settings.app, settings.session_dependency, settings.sessionmaker]
    if settings.schema is not None and not settings.schema.startswith(ALEMBIC_PREFIX):
        paths.append(settings.schema)
    packages: list[str] = []
    for path in paths:
        if path:
            top = path.partition(":")[0].strip().partition(".")[0]
            if top and top != _OWN_PACKAGE and top not in packages:
                packages.append(top)
    return packages


def imported_too_early(settings: Settings) -> list[str]:
    """The app's modules already imported: modules (not bare packages, which a conftest.py
    inside them imports) of the packages the settings name, conftest modules aside."""
    found: list[str] = []
    for package in _packages(settings):
        for name, module in list(sys.modules.items()):
            if name != package and not name.startswith(f"{package}."):
                continue
            if name.rpartition(".")[2] == "conftest" or hasattr(module, "__path__"):
                continue
            found.append(name)
    return sorted(found)


def too_early_message(modules: list[str], when: str) -> str:
    shown = ", ".join(repr(name) for name in modules[:5])
    more = f" and {len(modules) - 5} more" if len(modules) > 5 else ""
    return (
        f"testkit_database_env is set, but the app's module(s) {shown}{more} were imported "
        f"{when}, before the kit could set those variables: the app may have read its "
        "settings (a database URL, a cached get_settings()) from the shell's environment, and "
        "would write to that database instead of the kit's. The run stops here rather than "
        "run on other settings. Fix: load the kit through its entry point (installed) or with "
        "`-p anyio_fastapi_testkit.plugin`, not `pytest_plugins` in a conftest.py; and do not "
        "import the app from a pytest plugin that loads at start-up (import it in conftest.py "
        "or the tests, which the kit runs after setting the variables)."
    )


# For the doctor, which sets no variable before the conftest files: what was imported then.
EARLY_IMPORTS_KEY = pytest.StashKey[list[str]]()
