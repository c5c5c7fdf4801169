"""Render database URLs and driver messages without the passwords in them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

MASK = "***"
UNPARSEABLE = "<unparseable URL>"

# A stand-in for the query-string password: SQLAlchemy would percent-encode "***" there.
_QUERY_PLACEHOLDER = "TESTKITMASKEDPASSWORD"


def mask_url(url: str | URL) -> str:
    """Render ``url`` with its password, in the authority or the query string, shown as ``***``.

    Never raises: anything that is not a URL SQLAlchemy can parse renders as a placeholder.
    """
    # Here, not at import: the plugin's settings use this module in every process.
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        if "password" in parsed.query:
            parsed = parsed.update_query_dict({"password": _QUERY_PLACEHOLDER})
        rendered = parsed.render_as_string(hide_password=True)
    except Exception:  # garbage in must never turn an error report into a crash
        return UNPARSEABLE
    return rendered.replace(_QUERY_PLACEHOLDER, MASK)


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each non-empty secret in ``text`` by ``***``.

    The percent-encoded forms are masked too, as drivers may echo a URL back.
    """
    variants = {form for secret in secrets if secret for form in _encoded_forms(secret)}
    # Longest first, so a secret that contains another one is masked whole.
    for variant in sorted(variants, key=len, reverse=True):
        text = text.replace(variant, MASK)
    return text


def _encoded_forms(secret: str) -> tuple[str, ...]:
    return (secret, quote(secret, safe=""), quote_plus(secret, safe=""))


class SecretURL(str):
    """A URL string whose repr hides the password.

    pytest prints the reprs of locals and arguments in tracebacks; wrapping every URL that
    carries a password keeps it out of them, while it still works wherever a str does.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(mask_url(str(self)))
