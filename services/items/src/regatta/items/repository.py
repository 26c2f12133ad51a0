"""All SQL of the items service."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import ColumnElement

from regatta.common.versioned import VersionedRepository
from regatta.items.models import Item


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ItemRepository(VersionedRepository[Item]):
    """Items rows."""

    def __init__(self) -> None:
        super().__init__(Item)

    @staticmethod
    def filters(
        *, q: str | None, min_price: Decimal | None, max_price: Decimal | None
    ) -> list[ColumnElement[bool]]:
        """WHERE clauses for the list filters (each served by an index on Postgres)."""
        clauses: list[ColumnElement[bool]] = []
        if q:
            clauses.append(Item.name.ilike(f"%{_escape_like(q)}%", escape="\\"))
        if min_price is not None:
            clauses.append(Item.price >= min_price)
        if max_price is not None:
            clauses.append(Item.price <= max_price)
        return clauses
