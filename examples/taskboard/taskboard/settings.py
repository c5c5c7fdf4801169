"""Settings from separate environment variables, read once (``DATABASE__HOSTNAME`` ...,
``ALLOWED_HOSTS='["taskboard.example.com"]'``, ``API_TOKEN``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL


class DatabaseSettings(BaseModel):
    hostname: str = "localhost"
    port: int = 5432
    username: str = "taskboard"
    password: SecretStr = SecretStr("")
    name: str = "taskboard"

    def url(self, driver: str = "asyncpg") -> URL:
        return URL.create(
            f"postgresql+{driver}",
            username=self.username,
            password=self.password.get_secret_value() or None,
            host=self.hostname,
            port=self.port,
            database=self.name,
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    app_name: str = "taskboard"
    database: DatabaseSettings = DatabaseSettings()
    max_open_tasks: int = 50
    # Host headers the app answers (TrustedHostMiddleware); anything else gets a 400.
    allowed_hosts: list[str] = ["localhost", "127.0.0.1"]
    # Bearer token of the admin API (the audit log); unset, nobody gets in.
    api_token: SecretStr | None = None


@lru_cache
def get_settings() -> Settings:
    return Settings()
