"""Request and response bodies (pydantic v2)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
Year = Annotated[int, Field(ge=0, le=2100)]
CENT = Decimal("0.01")
# A price as the NUMERIC(10, 2) column stores it: "12.5" in a request is 12.50 in the
# response, as it is when read back from the database.
Money = Annotated[
    Decimal,
    Field(ge=0, max_digits=10, decimal_places=2),
    AfterValidator(lambda value: value.quantize(CENT)),
]


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
    price: Money | None = None

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
    price: Money | None = None


class BookOut(ORMModel):
    id: int
    title: str
    author_id: int
    isbn: str
    year: int | None
    price: Decimal | None
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


class PriceChangeOut(ORMModel):
    old_price: Decimal | None
    new_price: Decimal | None
    changed_at: datetime


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
