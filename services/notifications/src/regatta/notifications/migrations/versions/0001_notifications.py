"""Create the notifications, subscriptions and idempotency tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from regatta.common.data.columns import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the tables and the indexes the worker's claim query and the lists use."""
    op.create_table(
        "notifications",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("recipient", sa.String(320)),
        sa.Column("subject", sa.String(200)),
        sa.Column("body", sa.Text()),
        sa.Column("url", sa.String(2048)),
        sa.Column("payload", sa.JSON()),
        sa.Column("event_type", sa.String(64)),
        sa.Column("event_id", sa.String(128)),
        sa.Column("subscription_id", sa.Uuid()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(1000)),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(128)),
        sa.Column("claimed_until", UTCDateTime()),
        sa.Column("delivered_at", UTCDateTime()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
        sa.UniqueConstraint(
            "subscription_id", "event_id", name="uq_notifications_subscription_event"
        ),
    )
    op.create_index("ix_notifications_due", "notifications", ["status", "next_attempt_at"])
    op.create_index("ix_notifications_status_id", "notifications", ["status", "id"])
    op.create_table(
        "notification_subscriptions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_notification_subscriptions"),
    )
    op.create_index("ix_notification_subscriptions_event", "notification_subscriptions", ["event"])
    op.create_table(
        "notifications_idempotency_keys",
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_notifications_idempotency_keys"),
    )
    op.create_index(
        "ix_notifications_idempotency_keys_created_at",
        "notifications_idempotency_keys",
        ["created_at"],
    )


def downgrade() -> None:
    """Drop what upgrade created."""
    op.drop_table("notifications_idempotency_keys")
    op.drop_table("notification_subscriptions")
    op.drop_table("notifications")
