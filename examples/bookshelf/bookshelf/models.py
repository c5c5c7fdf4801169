"""ORM models. The Alembic revision in ``migrations/versions`` creates the same tables."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names, so the migration can name them and handlers can tell
# which constraint an IntegrityError came from.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Author(Base):
    __tablename__ = "authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)

    # Never loaded implicitly: ask for it with selectinload() (or awaitable_attrs) when needed.
    books: Mapped[list[Book]] = relationship(back_populates="author", lazy="raise")

    def __repr__(self) -> str:
        return f"Author(id={self.id!r}, name={self.name!r})"


class Book(Base):
    __tablename__ = "books"
    # An author cannot have two books with the same title; transfers between authors can
    # therefore fail row by row (see the transfer endpoint).
    __table_args__ = (UniqueConstraint("author_id", "title"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    author_id: Mapped[int] = mapped_column(
        ForeignKey("authors.id", ondelete="RESTRICT"), index=True
    )
    isbn: Mapped[str] = mapped_column(String(13), unique=True)
    year: Mapped[int | None]
    # Money: NUMERIC(10, 2), loaded as Decimal with two places (added by revision 0002).
    price: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    # Bumped in SQL on every update; the new value is read back with refresh().
    version: Mapped[int] = mapped_column(server_default=sql_text("1"))

    author: Mapped[Author] = relationship(back_populates="books", lazy="selectin")
    # Reviews go with their book; the database does the cascading (passive_deletes), so
    # deleting a book does not need the collection loaded.
    reviews: Mapped[list[Review]] = relationship(
        back_populates="book",
        lazy="raise",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Review.id",
    )

    def __repr__(self) -> str:
        return f"Book(id={self.id!r}, title={self.title!r}, isbn={self.isbn!r})"


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (CheckConstraint("rating BETWEEN 1 AND 5", name="rating_range"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id", ondelete="CASCADE"), index=True)
    rating: Mapped[int]
    text: Mapped[str] = mapped_column(Text, server_default="")

    book: Mapped[Book] = relationship(back_populates="reviews", lazy="raise")

    def __repr__(self) -> str:
        return f"Review(id={self.id!r}, book_id={self.book_id!r}, rating={self.rating!r})"


class PriceChange(Base):
    """A book's price history, written by ``services.record_price_change`` in a session of
    its own."""

    __tablename__ = "price_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id", ondelete="CASCADE"), index=True)
    old_price: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    new_price: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
