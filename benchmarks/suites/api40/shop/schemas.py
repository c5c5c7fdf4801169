"""Request and response bodies."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ProductIn(BaseModel):
    sku: str = Field(min_length=1, max_length=40)
    name: str
    price_cents: int = Field(ge=0)


class ProductPatch(BaseModel):
    name: str | None = None
    price_cents: int | None = Field(default=None, ge=0)
    active: bool | None = None


class ProductOut(ProductIn):
    model_config = ConfigDict(from_attributes=True)
    id: int
    active: bool


class CustomerIn(BaseModel):
    email: str
    name: str


class CustomerOut(CustomerIn):
    model_config = ConfigDict(from_attributes=True)
    id: int


class LineIn(BaseModel):
    product_id: int
    quantity: int = Field(gt=0)


class LineOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    product_id: int
    quantity: int
    unit_cents: int


class OrderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    customer_id: int
    status: str
    total_cents: int
    lines: list[LineOut]


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    action: str
    order_id: int | None
    amount_cents: int
