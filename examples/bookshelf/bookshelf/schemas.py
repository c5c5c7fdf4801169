"""Request and response bodies (pydantic v2)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
Year = Annotated[int, Field(ge=0, le=2100)]


class ORMModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class AuthorCreate(BaseModel):
    name: Name


class AuthorOut(ORMModel):
    id: int
    name: str


class BookCreate(BaseModel):
    title: Title
    author_id: int
    isbn: str = Field(description="ISBN-10 or ISBN-13; hyphens and spaces are ignored")
    year: Year | None = None

    @field_validator("isbn", mode="before")
    @classmethod
    def _normalise_isbn(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        isbn = value.replace("-", "").replace(" ", "").upper()
        ok = (len(isbn) == 13 and isbn.isdigit()) or (
            len(isbn) == 10 and isbn[:9].isdigit() and (isbn[9].isdigit() or isbn[9] == "X")
        )
        if not ok:
            raise ValueError("isbn must be 10 or 13 digits (ISBN-10 may end in X)")
        return isbn


class BookUpdate(BaseModel):
    title: Title | None = None
    year: Year | None = None


class BookOut(ORMModel):
    id: int
    title: str
    author_id: int
    isbn: str
    year: int | None
    version: int


class ReviewCreate(BaseModel):
    rating: int = Field(ge=1, le=5)
    text: str = Field(default="", max_length=2000)


class ReviewOut(ORMModel):
    id: int
    book_id: int
    rating: int
    text: str


class BookDetail(BookOut):
    reviews: list[ReviewOut]
    average_rating: float | None


class TransferRequest(BaseModel):
    to_author_id: int


class TransferResult(BaseModel):
    moved: list[int]
    kept: list[int]


class Health(BaseModel):
    status: str
    app_name: str
    started_at: datetime
    uptime_seconds: float
