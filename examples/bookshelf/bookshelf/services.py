"""Work done outside the request's session: each service opens its own session from the
container's sessionmaker and commits, whatever the request does with its own."""

from __future__ import annotations

from decimal import Decimal

from .container import container
from .models import PriceChange


async def record_price_change(book_id: int, old: Decimal | None, new: Decimal | None) -> None:
    """Append a row to the book's price history, committed on its own."""
    async with container.sessionmaker() as session:
        session.add(PriceChange(book_id=book_id, old_price=old, new_price=new))
        await session.commit()
