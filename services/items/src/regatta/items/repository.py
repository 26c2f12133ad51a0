"""All SQL of the items service."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import ColumnElement, String, func, literal

from regatta.common.data.repository import VersionedRepository
from regatta.items.models import UNICODE_COLLATION, Item


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ItemRepository(VersionedRepository[Item]):
    """Items rows."""

    def __init__(self) -> None:
        super().__init__(Item)

    @staticmethod
    def filters(
        *,
        q: str | None,
        min_price: Decimal | None,
        max_price: Decimal | None,
        dialect: str,
    ) -> list[ColumnElement[bool]]:
        """WHERE clauses for the list filters (each served by an index on Postgres)."""
        clauses: list[ColumnElement[bool]] = []
        if q:
            clauses.append(name_contains_any_case(q, dialect))
        if min_price is not None:
            clauses.append(Item.price >= min_price)
        if max_price is not None:
            clauses.append(Item.price <= max_price)
        return clauses


def name_contains_any_case(text: str, dialect: str) -> ColumnElement[bool]:
    """The name contains ``text``, letters compared in lower case, for every alphabet.

    Postgres lowers both sides under the ICU root collation, whatever the database's own
    locale (under ``C``, ``lower()`` and ``ILIKE`` change ASCII letters only), and the trigram
    index ``ix_items_name_lower_trgm_price`` holds the same expression; SQLite lowers with Python
    (its own ``lower()`` is ASCII only, see db.py).
    """
    pattern = f"%{_escape_like(text)}%"
    if dialect == "sqlite":
        return func.regatta_lower(Item.name).like(pattern.lower(), escape="\\")
    lowered = func.lower(Item.name.collate(UNICODE_COLLATION))
    searched = func.lower(literal(pattern, String).collate(UNICODE_COLLATION))
    return lowered.like(searched, escape="\\")
