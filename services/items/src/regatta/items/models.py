"""Tables of the items service."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Index, MetaData, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from regatta.common.data.columns import Money
from regatta.common.data.idempotency import idempotency_table
from regatta.common.data.outbox import outbox_table
from regatta.common.data.repository import VersionedMixin

# The collation under which searches compare lower case on Postgres: ICU's root locale, which
# every Postgres built with ICU has, whatever locale the database was created with.
UNICODE_COLLATION = "und-x-icu"


class Base(DeclarativeBase):
    """Declarative base of the items tables."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Item(VersionedMixin, Base):
    """An item for sale."""

    __tablename__ = "items"
    __table_args__ = (
        Index("ix_items_price", "price"),
        # Trigrams of the name and the price in one GIN index (btree_gin): "name contains q"
        # in any case (repository.name_contains_any_case) without a sequential scan, and with
        # a price filter intersected as the index is read (migration 0005).
        Index(
            "ix_items_name_lower_trgm_price",
            text(f'lower((name COLLATE "{UNICODE_COLLATION}")) gin_trgm_ops'),
            "price",
            postgresql_using="gin",
        ),
        {"sqlite_autoincrement": True},  # never reuse the id of a deleted item
    )

    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str | None] = mapped_column(String(2000))
    price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    tax: Mapped[Decimal | None] = mapped_column(Money)


idempotency_keys = idempotency_table(Base.metadata, "items_idempotency_keys")
outbox = outbox_table(Base.metadata, "items_outbox")
