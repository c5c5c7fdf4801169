"""Settings, read from the environment once, when the container is built at import."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_DATABASE_URL = "postgresql+psycopg://localhost/bookshelf"


@dataclass(frozen=True)
class Settings:
    app_name: str = "bookshelf"
    max_page_size: int = 100
    database_url: str = DEFAULT_DATABASE_URL

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            app_name=os.environ.get("BOOKSHELF_APP_NAME", cls.app_name),
            max_page_size=int(os.environ.get("BOOKSHELF_MAX_PAGE_SIZE", cls.max_page_size)),
            database_url=os.environ.get("DATABASE_URL", cls.database_url),
        )
