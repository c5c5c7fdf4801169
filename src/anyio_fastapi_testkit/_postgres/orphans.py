"""Stop and delete the clusters of pytest runs that died without stopping them.

Each state folder's ``owner.json`` names the pytest process that made it; a folder whose
owner is gone (or that never got an owner.json) is an orphan, and the next run removes it.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from .cluster import shutdown
from .processes import process_alive
from .state_folder import STATE_PREFIX, read_owner, recorded_socket_dir, remove_state

# A state folder without owner.json may be a run that is creating it right now.
_UNOWNED_GRACE_SECONDS = 60.0


def cleanup_orphans(base_dir: Path) -> list[Path]:
    """Stop and delete the clusters in ``base_dir`` whose pytest process is gone.

    A folder whose owner still runs (a concurrent pytest run) is never touched.
    Returns the folders removed.
    """
    if not base_dir.is_dir():
        return []
    removed = []
    for state_dir in sorted(base_dir.glob(f"{STATE_PREFIX}*")):
        owner = read_owner(state_dir)
        # One folder the kit cannot inspect must not keep this run from starting.
        with contextlib.suppress(OSError):
            if _is_orphan(state_dir, owner):
                _remove_orphan(state_dir, owner)
                removed.append(state_dir)
    return removed


def _remove_orphan(state_dir: Path, owner: dict[str, Any] | None) -> None:
    recorded_bin = owner.get("bin_dir") if owner else None
    bin_dir = Path(recorded_bin) if isinstance(recorded_bin, str) else None
    shutdown(state_dir / "data", bin_dir, modes=("immediate",))
    remove_state(state_dir, recorded_socket_dir(owner))


def _is_orphan(state_dir: Path, owner: dict[str, Any] | None) -> bool:
    if not state_dir.is_dir():
        return False
    if owner is None:
        try:
            age = time.time() - state_dir.stat().st_mtime
        except OSError:
            return False
        return age > _UNOWNED_GRACE_SECONDS
    return not process_alive(owner["pid"], owner.get("clock"), owner.get("started"))
