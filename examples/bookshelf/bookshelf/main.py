"""The bookshelf API: authors, their books and reviews of those books."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, TypedDict, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from pydantic import field_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from . import services
from .container import container
from .live import router as live_router
from .models import Author, Book, PriceChange, Review
from .schemas import (
    AuthorCreate,
    AuthorOut,
    BookCreate,
    BookDetail,
    BookOut,
    BookUpdate,
    Health,
    PriceChangeOut,
    ReviewCreate,
    ReviewOut,
    TransferRequest,
    TransferResult,
)
from .settings import Settings


class LifespanState(TypedDict):
    settings: Settings
    started_at: datetime


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[LifespanState]:
    # Starlette copies this mapping into every request's ``request.state``.
    # No database work here: the engine connects when a request first needs it.
    try:
        yield {"settings": container.settings, "started_at": datetime.now(timezone.utc)}
    finally:
        await container.dispose()


app = FastAPI(title="Bookshelf", lifespan=lifespan)
app.include_router(live_router)

SessionDep = Annotated[AsyncSession, Depends(container.session)]


def get_settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]

# Which unique/foreign-key constraint failed -> what the client is told.
_CONSTRAINT_ERRORS: dict[str, tuple[int, str]] = {
    "uq_authors_name": (status.HTTP_409_CONFLICT, "an author with this name already exists"),
    "uq_books_isbn": (status.HTTP_409_CONFLICT, "a book with this ISBN already exists"),
    "uq_books_author_id_title": (
        status.HTTP_409_CONFLICT,
        "this author already has a book with this title",
    ),
    "fk_books_author_id_authors": (status.HTTP_404_NOT_FOUND, "author not found"),
    "fk_reviews_book_id_books": (status.HTTP_404_NOT_FOUND, "book not found"),
}


def _constraint_name(exc: IntegrityError) -> str | None:
    """The name of the violated constraint, for psycopg and asyncpg alike."""
    orig = exc.orig
    diag = getattr(orig, "diag", None)  # psycopg
    name = getattr(diag, "constraint_name", None)
    if name is None:  # asyncpg keeps it on the driver exception wrapped by the adapter
        name = getattr(getattr(orig, "__cause__", None), "constraint_name", None)
    if name is None:
        message = str(orig)
        name = next((known for known in _CONSTRAINT_ERRORS if f'"{known}"' in message), None)
    return name


def _integrity_http_error(exc: IntegrityError) -> HTTPException:
    status_code, detail = _CONSTRAINT_ERRORS.get(
        _constraint_name(exc) or "", (status.HTTP_409_CONFLICT, "conflict")
    )
    return HTTPException(status_code, detail)


async def _commit(session: AsyncSession) -> None:
    """Commit, turning a constraint violation into an HTTP error after rolling back."""
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise _integrity_http_error(exc) from None


_Model = TypeVar("_Model", Author, Book)


async def _get_or_404(session: AsyncSession, model: type[_Model], ident: int, what: str) -> _Model:
    obj = await session.get(model, ident)
    if obj is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")
    return obj


# --- health -----------------------------------------------------------------------------------


@app.get("/health", response_model=Health)
async def health(request: Request, settings: SettingsDep) -> Health:
    started_at: datetime = request.state.started_at
    return Health(
        status="ok",
        app_name=settings.app_name,
        started_at=started_at,
        uptime_seconds=(datetime.now(timezone.utc) - started_at).total_seconds(),
    )


# --- authors ----------------------------------------------------------------------------------


@app.post("/authors", response_model=AuthorOut, status_code=status.HTTP_201_CREATED)
async def create_author(body: AuthorCreate, session: SessionDep) -> Author:
    author = Author(name=body.name)
    session.add(author)
    await _commit(session)  # 409 on a duplicate name, after session.rollback()
    return author


@app.get("/authors", response_model=list[AuthorOut])
async def list_authors(
    session: SessionDep,
    q: Annotated[str | None, Query(description="case-insensitive part of the name")] = None,
) -> list[Author]:
    stmt = select(Author).order_by(Author.name, Author.id)
    if q:
        stmt = stmt.where(Author.name.icontains(q, autoescape=True))
    return list((await session.scalars(stmt)).all())


@app.get("/authors/{author_id}", response_model=AuthorOut)
async def get_author(author_id: int, session: SessionDep) -> Author:
    return await _get_or_404(session, Author, author_id, "author")


@app.post("/authors/{author_id}/transfer", response_model=TransferResult)
async def transfer_books(
    author_id: int, body: TransferRequest, session: SessionDep
) -> TransferResult:
    """Move every book of one author to another.

    Each move runs in its own SAVEPOINT: a book whose title the target author already has is
    rolled back on its own and stays where it was, and the other moves are kept.
    """
    if body.to_author_id == author_id:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "cannot transfer books to the same author")
    source = await _get_or_404(session, Author, author_id, "author")
    target = await _get_or_404(session, Author, body.to_author_id, "target author")

    books = (
        await session.scalars(select(Book).where(Book.author_id == source.id).order_by(Book.id))
    ).all()
    moved: list[int] = []
    kept: list[int] = []
    for book in books:
        book_id = book.id  # the object is expired if its savepoint rolls back
        try:
            async with session.begin_nested():
                book.author = target  # flushed when the savepoint is released
        except IntegrityError:
            kept.append(book_id)
        else:
            moved.append(book_id)
    await session.commit()
    return TransferResult(moved=moved, kept=kept)


# --- books ------------------------------------------------------------------------------------


@app.post("/books", response_model=BookOut, status_code=status.HTTP_201_CREATED)
async def create_book(body: BookCreate, session: SessionDep) -> Book:
    await _get_or_404(session, Author, body.author_id, "author")
    book = Book(
        title=body.title,
        author_id=body.author_id,
        isbn=body.isbn,
        year=body.year,
        price=body.price,
    )
    session.add(book)
    await _commit(session)  # 409 on a duplicate ISBN or title
    return book


@app.get("/books", response_model=list[BookOut])
async def list_books(
    session: SessionDep,
    settings: SettingsDep,
    author_id: int | None = None,
    year_from: int | None = None,
    year_to: int | None = None,
    q: Annotated[str | None, Query(description="case-insensitive part of the title")] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[Book]:
    stmt = select(Book).order_by(Book.id)
    if author_id is not None:
        stmt = stmt.where(Book.author_id == author_id)
    if year_from is not None:
        stmt = stmt.where(Book.year >= year_from)
    if year_to is not None:
        stmt = stmt.where(Book.year <= year_to)
    if q:
        stmt = stmt.where(Book.title.icontains(q, autoescape=True))
    page_size = min(limit or settings.max_page_size, settings.max_page_size)
    stmt = stmt.limit(page_size).offset(offset)
    return list((await session.scalars(stmt)).all())


@app.get("/books/{book_id}", response_model=BookDetail)
async def get_book(book_id: int, session: SessionDep) -> BookDetail:
    # populate_existing: the session may already hold this book with an older reviews
    # collection (a session can outlive one request, e.g. in tests); read what is in the database.
    stmt = (
        select(Book)
        .where(Book.id == book_id)
        .options(selectinload(Book.reviews))
        .execution_options(populate_existing=True)
    )
    book = await session.scalar(stmt)
    if book is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "book not found")
    ratings = [review.rating for review in book.reviews]
    return BookDetail(
        **BookOut.model_validate(book).model_dump(),
        reviews=[ReviewOut.model_validate(review) for review in book.reviews],
        average_rating=round(sum(ratings) / len(ratings), 2) if ratings else None,
    )


class _BookPatch(BookUpdate):
    @field_validator("title")
    @classmethod
    def _title_not_null(cls, value: str | None) -> str | None:
        if value is None:
            raise ValueError("title cannot be null")
        return value


@app.patch("/books/{book_id}", response_model=BookOut)
async def update_book(book_id: int, body: _BookPatch, session: SessionDep) -> Book:
    book = await _get_or_404(session, Book, book_id, "book")
    changes = body.model_dump(exclude_unset=True)
    old_price = book.price
    for field, value in changes.items():
        setattr(book, field, value)
    # Computed by the database: after the commit the attribute is expired, and refresh()
    # fetches the new value (plain attribute access would need IO outside an await).
    book.version = Book.version + 1
    await _commit(session)
    await session.refresh(book)
    if "price" in changes and book.price != old_price:
        await services.record_price_change(book.id, old_price, book.price)
    return book


@app.get("/books/{book_id}/prices", response_model=list[PriceChangeOut])
async def price_history(book_id: int, session: SessionDep) -> list[PriceChange]:
    await _get_or_404(session, Book, book_id, "book")
    stmt = select(PriceChange).where(PriceChange.book_id == book_id).order_by(PriceChange.id)
    return list((await session.scalars(stmt)).all())


@app.delete("/books/{book_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_book(book_id: int, session: SessionDep) -> Response:
    book = await _get_or_404(session, Book, book_id, "book")
    await session.delete(book)  # reviews go too (ON DELETE CASCADE)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- reviews ----------------------------------------------------------------------------------


@app.post("/books/{book_id}/reviews", response_model=ReviewOut, status_code=status.HTTP_201_CREATED)
async def add_review(book_id: int, body: ReviewCreate, session: SessionDep) -> Review:
    await _get_or_404(session, Book, book_id, "book")
    review = Review(book_id=book_id, rating=body.rating, text=body.text)
    session.add(review)
    await _commit(session)
    return review


@app.get("/books/{book_id}/reviews", response_model=list[ReviewOut])
async def list_reviews(book_id: int, session: SessionDep) -> list[Review]:
    await _get_or_404(session, Book, book_id, "book")
    stmt = select(Review).where(Review.book_id == book_id).order_by(Review.id)
    return list((await session.scalars(stmt)).all())


@app.get("/stats")
async def stats(session: SessionDep) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, model in (("authors", Author), ("books", Book), ("reviews", Review)):
        counts[name] = await session.scalar(select(func.count()).select_from(model)) or 0
    return counts
