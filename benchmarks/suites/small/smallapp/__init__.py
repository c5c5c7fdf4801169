"""A small notes service shaped like a popular template: pydantic-settings, asyncpg, Alembic."""
