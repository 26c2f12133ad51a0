"""Add trace_context to items_outbox: events carry the trace of the change behind them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable column (events written before it simply start no trace)."""
    op.add_column("items_outbox", sa.Column("trace_context", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("items_outbox") as batch:
        batch.drop_column("trace_context")
