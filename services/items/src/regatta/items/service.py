"""Rules of the items service; the common Resource does the caching and concurrency."""

from __future__ import annotations

from decimal import Decimal

from fastapi import Request

from regatta.common.data.db import Database
from regatta.common.data.idempotency import IdempotencyStore, StoredResponse
from regatta.common.http.conditional import Precondition
from regatta.common.http.pagination import PageRequest
from regatta.common.http.problems import invalid_field
from regatta.common.http.resources import Resource
from regatta.common.redis.cache import CachedResponse, ResponseCache
from regatta.items.models import Item, outbox
from regatta.items.repository import ItemRepository
from regatta.items.schemas import SEARCH_MIN_LENGTH, ItemCreate, ItemRead, ItemUpdate

SERVICE_NAME = "items"

items: Resource[Item, ItemRead] = Resource(
    name=SERVICE_NAME,
    singular="item",
    repository=ItemRepository(),
    read_schema=ItemRead,
    outbox=outbox,
)


async def create_item(
    *,
    request: Request,
    database: Database,
    cache: ResponseCache,
    store: IdempotencyStore,
    idempotency_key: str | None,
    principal: str,
    item: ItemCreate,
) -> StoredResponse:
    """Create an item, once per idempotency key."""
    return await items.create(
        request=request,
        database=database,
        cache=cache,
        store=store,
        idempotency_key=idempotency_key,
        principal=principal,
        values=item.model_dump(),
    )


async def get_item(*, database: Database, cache: ResponseCache, item_id: int) -> CachedResponse:
    """One item, rendered."""
    return await items.read(database=database, cache=cache, row_id=item_id)


async def list_items(
    *,
    database: Database,
    page: PageRequest,
    q: str | None,
    min_price: Decimal | None,
    max_price: Decimal | None,
) -> bytes:
    """A page of items matching the filters."""
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
    where = ItemRepository.filters(
        q=q, min_price=min_price, max_price=max_price, dialect=database.dialect
    )
    return await items.list(database=database, page=page, where=where)


async def update_item(
    *,
    database: Database,
    cache: ResponseCache,
    item_id: int,
    changes: ItemUpdate,
    precondition: Precondition | None,
) -> CachedResponse:
    """Change some fields of an item."""
    return await items.update(
        database=database,
        cache=cache,
        row_id=item_id,
        values=changes.changes(),
        precondition=precondition,
    )


async def delete_item(
    *, database: Database, cache: ResponseCache, item_id: int, precondition: Precondition | None
) -> None:
    """Delete an item."""
    await items.delete(database=database, cache=cache, row_id=item_id, precondition=precondition)
