"""Search names in lower case for every alphabet: the trigram index on lower(name) under ICU.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Index what the search compares (Postgres; SQLite reads its few rows)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE INDEX ix_items_name_lower_trgm ON items "
        'USING gin (lower((name COLLATE "und-x-icu")) gin_trgm_ops)'
    )
    # A sample of 300 k rows rather than 30 k: the estimate of a text in about one name in a
    # hundred then holds from one ANALYZE to the next, and with it the choice between walking
    # the ids in order (a frequent text: a page is found at once) and the trigram index (a
    # rare one). Planning reads the larger statistics (tests/load/README.md).
    op.execute("ALTER INDEX ix_items_name_lower_trgm ALTER COLUMN 1 SET STATISTICS 1000")
    op.drop_index("ix_items_name_trgm", table_name="items")


def downgrade() -> None:
    """Back to the index of ILIKE on the name."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE INDEX ix_items_name_trgm ON items USING gin (name gin_trgm_ops)")
    op.drop_index("ix_items_name_lower_trgm", table_name="items")
