"""Create the items and items_idempotency_keys tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from regatta.common.data.columns import BigIntPK, Money, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the tables and their indexes."""
    op.create_table(
        "items",
        sa.Column("id", BigIntPK, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.String(2000)),
        sa.Column("price", Money(), nullable=False),
        sa.Column("tax", Money()),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_items"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_items_price", "items", ["price"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.create_index(
            "ix_items_name_trgm",
            "items",
            ["name"],
            postgresql_using="gin",
            postgresql_ops={"name": "gin_trgm_ops"},
        )
    op.create_table(
        "items_idempotency_keys",
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_items_idempotency_keys"),
    )
    op.create_index(
        "ix_items_idempotency_keys_created_at", "items_idempotency_keys", ["created_at"]
    )


def downgrade() -> None:
    """Drop what upgrade created."""
    op.drop_table("items_idempotency_keys")
    op.drop_table("items")
