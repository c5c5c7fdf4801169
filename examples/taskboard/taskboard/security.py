"""The admin API's bearer token, compared with the one in the settings."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .settings import Settings, get_settings

# auto_error=False: answer 401 (not FastAPI's default for a missing header, which changed
# between releases) with the WWW-Authenticate header clients expect.
bearer = HTTPBearer(auto_error=False)


async def require_admin(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> None:
    """Router dependency: the request must carry ``Authorization: Bearer <API_TOKEN>``."""
    expected = settings.api_token
    given = credentials.credentials if credentials is not None else ""
    if expected is None or not secrets.compare_digest(
        given.encode(), expected.get_secret_value().encode()
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or invalid API token",
            headers={"WWW-Authenticate": "Bearer"},
        )
