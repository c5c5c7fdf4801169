"""``python -m anyio_fastapi_testkit doctor [pytest options]``: ``pytest --testkit-doctor``."""

from __future__ import annotations

import sys

import pytest

USAGE = "usage: python -m anyio_fastapi_testkit doctor [pytest options, e.g. --testkit-db-url URL]"


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "doctor":
        sys.stderr.write(USAGE + "\n")
        return int(pytest.ExitCode.USAGE_ERROR)
    # -p also loads the plugin when plugin autoloading is disabled (a no-op otherwise).
    return int(pytest.main(["-p", "anyio_fastapi_testkit.plugin", "--testkit-doctor", *argv[1:]]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
