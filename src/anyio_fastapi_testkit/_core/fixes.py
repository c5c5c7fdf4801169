"""The advice that ends the server modules' error messages: which settings fix what."""

from __future__ import annotations

URL_SETTINGS = "--testkit-db-url, TESTKIT_DATABASE_URL or the testkit_database_url ini option"
URL_FIXES = (
    "Fix: start that server; or correct the URL (user, password, host, port, database) in "
    f"{URL_SETTINGS}; or unset all three to have the kit start an embedded server."
)
LOCAL_FIXES = (
    "This is the kit's own throwaway server; if it keeps happening, point the kit at a "
    f"running server with {URL_SETTINGS}."
)
