"""Add the items_outbox table: platform events written with each change.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from regatta.common.data.columns import BigIntPK, UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the outbox and the partial index the relay scans."""
    op.create_table(
        "items_outbox",
        sa.Column("id", BigIntPK, primary_key=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_items_outbox"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_items_outbox_unpublished",
        "items_outbox",
        ["id"],
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    )


def downgrade() -> None:
    """Drop the outbox."""
    op.drop_table("items_outbox")
