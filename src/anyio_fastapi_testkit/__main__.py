"""``python -m anyio_fastapi_testkit doctor [pytest options]``: ``pytest --testkit-doctor``."""

from __future__ import annotations

import sys

import pytest

USAGE = "usage: python -m anyio_fastapi_testkit doctor [pytest options, e.g. --testkit-db-url URL]"

HELP = f"""{USAGE}

anyio-fastapi-testkit is a pytest plugin: installed, it is loaded by pytest itself, and its
fixtures (client, db_session, ...) are listed by `pytest --fixtures`.

commands:
  doctor    run no test: check the set-up (backends, conflicting plugins, the database
            server and schema, the app's import and lifespan, the session dependency,
            factories) and print one line per check; exit status 1 if a check finds a
            problem. Same as `pytest --testkit-doctor`; takes pytest's options, the kit's
            settings (`pytest --help`, section "anyio-fastapi-testkit") among them.

options:
  -h, --help  show this message and exit
"""


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(HELP)
        return 0
    if not argv or argv[0] != "doctor":
        sys.stderr.write(USAGE + "\n")
        return int(pytest.ExitCode.USAGE_ERROR)
    # -p also loads the plugin when plugin autoloading is disabled (a no-op otherwise).
    return int(pytest.main(["-p", "anyio_fastapi_testkit.plugin", "--testkit-doctor", *argv[1:]]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
