"""Create the heroes and heroes_idempotency_keys tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from regatta.common.data.columns import BigIntPK, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the tables and the indexes that serve the list filters."""
    op.create_table(
        "heroes",
        sa.Column("id", BigIntPK, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("secret_name", sa.String(100), nullable=False),
        sa.Column("age", sa.Integer()),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_heroes"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_heroes_name_id", "heroes", ["name", "id"])
    op.create_index(
        "ix_heroes_name_prefix", "heroes", ["name"], postgresql_ops={"name": "varchar_pattern_ops"}
    )
    op.create_index("ix_heroes_age", "heroes", ["age"])
    op.create_table(
        "heroes_idempotency_keys",
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_heroes_idempotency_keys"),
    )
    op.create_index(
        "ix_heroes_idempotency_keys_created_at", "heroes_idempotency_keys", ["created_at"]
    )


def downgrade() -> None:
    """Drop what upgrade created."""
    op.drop_table("heroes_idempotency_keys")
    op.drop_table("heroes")
