"""Add trace_context to notifications: a delivery joins the trace of the request behind it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable column (notifications accepted before it start their own trace)."""
    op.add_column("notifications", sa.Column("trace_context", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("trace_context")
