"""Fold the delivery lease into next_attempt_at; index the claimable rows by it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIMABLE = "status IN ('queued', 'sending')"


def upgrade() -> None:
    """Leases in flight end at next_attempt_at; the claim reads one partial index in order."""
    op.execute(
        "UPDATE notifications SET next_attempt_at = claimed_until "
        "WHERE status = 'sending' AND claimed_until IS NOT NULL"
    )
    op.create_index(
        "ix_notifications_claimable",
        "notifications",
        ["next_attempt_at"],
        postgresql_where=sa.text(CLAIMABLE),
        sqlite_where=sa.text(CLAIMABLE),
    )
    # It served the claim only; the claimable index serves the backlog gauge as well.
    op.drop_index("ix_notifications_due", table_name="notifications")


def downgrade() -> None:
    """Back to the (status, next_attempt_at) index."""
    op.create_index("ix_notifications_due", "notifications", ["status", "next_attempt_at"])
    op.drop_index("ix_notifications_claimable", table_name="notifications")
