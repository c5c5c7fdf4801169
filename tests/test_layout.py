"""The kit's rooms import downward only: a module of a lower subpackage never imports a higher one.

The order, lowest first: ``_core`` (settings, errors, URLs, the real clock), ``_diagnostics``
(time limits, task and stack reports, query counting: what the rooms above watch with),
``_postgres`` (the server), ``_provisioning`` (template and working databases),
``_isolation`` (connection, transaction, sessions), ``_http`` (app, client). The public
modules and ``_doctor`` (which checks everything) sit on top. Every import is read from the
source with ``ast``, those inside functions too (a lazy import is still a dependency);
strings (scripts for subprocesses) are not imports. Upward imports that had to stay would be
listed in ``KNOWN_UPWARD``: the test fails on a new one, and on a listed one that is gone, so
that the list stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import anyio_fastapi_testkit

PACKAGE = Path(anyio_fastapi_testkit.__file__).parent
ORDER = ("_core", "_diagnostics", "_postgres", "_provisioning", "_isolation", "_http")
RANK = {room: rank for rank, room in enumerate(ORDER)}

# (importing module, imported room): upward imports left to remove.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def imported_rooms(path: Path) -> set[str]:
    """The kit's top-level subpackages and modules that the module at ``path`` imports."""
    return rooms_in(path.read_text(), path.relative_to(PACKAGE).with_suffix("").parts)


def rooms_in(source: str, module_parts: tuple[str, ...]) -> set[str]:
    """The rooms imported by ``source``, the module at ``module_parts`` inside the package."""
    rooms: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            elif node.level > len(module_parts):
                continue  # above the package: not the kit's
            else:
                base = list(module_parts[: len(module_parts) - node.level])
                relative = [*base, *(node.module.split(".") if node.module else [])]
                if not relative:  # `from . import x` in the package's own __init__
                    relative = [alias.name for alias in node.names][:1]
                names = ["anyio_fastapi_testkit." + ".".join(relative)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "anyio_fastapi_testkit" and len(parts) > 1:
                rooms.add(parts[1])
    return rooms


def upward_imports() -> set[tuple[str, str]]:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        room = relative.parts[0]
        if len(relative.parts) == 1 or room not in RANK:
            continue  # the public modules and the doctor: no rank
        for imported in imported_rooms(path):
            if imported in RANK and RANK[imported] > RANK[room]:
                found.add((relative.as_posix(), imported))
    return found


def test_the_rooms_exist() -> None:
    rooms = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert set(ORDER) <= rooms


def test_the_import_reader_sees_relative_absolute_and_lazy_imports() -> None:
    source = (
        "from .._provisioning import databases\n"
        "from . import cluster\n"
        "import anyio_fastapi_testkit._http.app\n"
        "def later():\n"
        "    from ..._elsewhere import errors\n"  # above the package: not the kit's
        "    from .._isolation.leaks import LeakDetector\n"
        "SCRIPT = 'from anyio_fastapi_testkit._diagnostics import doctor'\n"
    )
    found = rooms_in(source, ("_postgres", "probe"))
    assert found == {"_provisioning", "_postgres", "_http", "_isolation"}


def test_postgres_imports_nothing_from_provisioning() -> None:
    for path in sorted((PACKAGE / "_postgres").glob("*.py")):
        assert "_provisioning" not in imported_rooms(path), path.name


def test_no_room_imports_a_higher_one() -> None:
    found = upward_imports()
    new = found - KNOWN_UPWARD
    assert not new, f"lower rooms import higher ones (order {' < '.join(ORDER)}): {sorted(new)}"
    gone = KNOWN_UPWARD - found
    assert not gone, f"fixed: remove these from KNOWN_UPWARD: {sorted(gone)}"
