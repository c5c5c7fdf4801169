"""The benchmark's sample app: users and their items, FastAPI on async SQLAlchemy."""
