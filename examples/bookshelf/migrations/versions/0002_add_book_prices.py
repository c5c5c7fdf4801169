"""add book prices and their history

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("books", sa.Column("price", sa.Numeric(precision=10, scale=2), nullable=True))
    op.create_table(
        "price_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("book_id", sa.Integer(), nullable=False),
        sa.Column("old_price", sa.Numeric(precision=10, scale=2), nullable=True),
        sa.Column("new_price", sa.Numeric(precision=10, scale=2), nullable=True),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["book_id"],
            ["books.id"],
            name="fk_price_changes_book_id_books",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_price_changes"),
    )
    op.create_index("ix_price_changes_book_id", "price_changes", ["book_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_price_changes_book_id", table_name="price_changes")
    op.drop_table("price_changes")
    op.drop_column("books", "price")
