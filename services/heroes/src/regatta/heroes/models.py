"""Tables of the heroes service."""

from __future__ import annotations

from sqlalchemy import Index, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from regatta.common.data.idempotency import idempotency_table
from regatta.common.data.outbox import outbox_table
from regatta.common.data.repository import VersionedMixin


class Base(DeclarativeBase):
    """Declarative base of the heroes tables."""

    metadata = MetaData(naming_convention={"pk": "pk_%(table_name)s"})


class Hero(VersionedMixin, Base):
    """A hero; ``secret_name`` is stored but never returned."""

    __tablename__ = "heroes"
    __table_args__ = (
        # (name, id): an exact-name filter walks the index already in page order.
        Index("ix_heroes_name_id", "name", "id"),
        # Pattern ops make LIKE 'prefix%' an index range scan under any collation.
        Index(
            "ix_heroes_name_prefix",
            "name",
            postgresql_ops={"name": "varchar_pattern_ops"},
        ),
        Index("ix_heroes_age", "age"),
        {"sqlite_autoincrement": True},
    )

    name: Mapped[str] = mapped_column(String(100), nullable=False)
    secret_name: Mapped[str] = mapped_column(String(100), nullable=False)
    age: Mapped[int | None] = mapped_column(Integer)


idempotency_keys = idempotency_table(Base.metadata, "heroes_idempotency_keys")
outbox = outbox_table(Base.metadata, "heroes_outbox")
