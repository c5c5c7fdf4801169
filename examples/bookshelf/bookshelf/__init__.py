"""Bookshelf: an example FastAPI + async SQLAlchemy app tested with anyio-fastapi-testkit."""
