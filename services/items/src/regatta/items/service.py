"""Rules of the items service; the common Resource does the caching and concurrency."""

from __future__ import annotations

from decimal import Decimal

from regatta.common.http.problems import invalid_field
from regatta.common.http.resource_routes import Where
from regatta.common.http.resources import Resource
from regatta.items.models import Item, outbox
from regatta.items.repository import ItemRepository
from regatta.items.schemas import SEARCH_MIN_LENGTH, ItemRead

SERVICE_NAME = "items"

items: Resource[Item, ItemRead] = Resource(
    name=SERVICE_NAME,
    singular="item",
    repository=ItemRepository(),
    read_schema=ItemRead,
    outbox=outbox,
)


def list_filters(*, q: str | None, min_price: Decimal | None, max_price: Decimal | None) -> Where:
    """The list's filters, checked (422): a price range in order, a search long enough."""
    if min_price is not None and max_price is not None and min_price > max_price:
        raise invalid_field("min_price", "query", "must not exceed max_price", kind="range")
    if q is not None and len(q) < SEARCH_MIN_LENGTH:
        raise invalid_field(
            "q",
            "query",
            f"must be at least {SEARCH_MIN_LENGTH} characters: a name search looks for "
            f"{SEARCH_MIN_LENGTH} or more (leave q out to list every item)",
            kind="string_too_short",
        )
    return lambda dialect: ItemRepository.filters(
        q=q, min_price=min_price, max_price=max_price, dialect=dialect
    )
