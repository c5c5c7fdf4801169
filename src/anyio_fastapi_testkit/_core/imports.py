"""Import objects named by settings ("pkg.module:attr" or "pkg.module:factory()")."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError


def import_from_path(path: str, setting: str, *, what: str) -> Any:
    """Import ``pkg.module:attr.sub`` (or call it when written ``...:factory()``).

    ``setting`` and ``what`` only shape error messages, which name the setting to fix.
    """
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(
            f'{setting} = {path!r} must name {what} as "package.module:attribute" '
            f'(or "package.module:factory()" for a factory).'
        )
    call = attr_path.endswith("()")
    if call:
        attr_path = attr_path[:-2]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ConfigError(
                f"{setting} = {path!r}: module {module_name!r} cannot be imported ({exc}). "
                "Check the spelling, install your project (`pip install -e .`), or put its "
                "folder on sys.path with pytest's `pythonpath` ini option."
            ) from exc
        raise ConfigError(
            f"{setting} = {path!r}: importing {module_name!r} failed because it imports a "
            f"missing module: {exc}. Install it, or fix that import."
        ) from exc
    except Exception as exc:
        raise ConfigError(
            f"{setting} = {path!r}: importing {module_name!r} raised "
            f"{type(exc).__name__}: {exc} (traceback above)."
        ) from exc
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            public = sorted(name for name in vars(module) if not name.startswith("_"))
            raise ConfigError(
                f"{setting} = {path!r}: {module_name!r} has no attribute {attr_path!r}. "
                f"Names it defines: {', '.join(public) or '(none)'}."
            ) from None
    if call:
        if not callable(obj):
            raise ConfigError(f"{setting} = {path!r}: {attr_path!r} is not callable.")
        try:
            obj = obj()
        except Exception as exc:
            raise ConfigError(
                f"{setting} = {path!r}: calling {attr_path}() raised "
                f"{type(exc).__name__}: {exc} (traceback above)."
            ) from exc
    return obj
