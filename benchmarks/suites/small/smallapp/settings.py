"""Settings read from the environment once, behind an lru_cache (the template's way)."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings


class Settings(BaseSettings):
    database_url: str = "postgresql+asyncpg://localhost/smallapp"
    app_name: str = "smallapp"


@lru_cache
def get_settings() -> Settings:
    return Settings()
