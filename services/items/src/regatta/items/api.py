"""HTTP routes of the items service: parse, call the service, return."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from regatta.common.data.db import DatabaseDep
from regatta.common.data.idempotency import IdempotencyKeyHeader, IdempotencyStore
from regatta.common.http.auth import WriterDep
from regatta.common.http.conditional import (
    NOT_MODIFIED,
    IfMatchHeader,
    IfNoneMatchHeader,
    parse_if_match,
)
from regatta.common.http.pagination import PageDep
from regatta.common.http.problems import problem_responses
from regatta.common.http.resources import (
    CacheDep,
    entry_response,
    idempotency_store,
    json_response,
    stored_response,
)
from regatta.common.http.routing import STRICT_QUERY, route_head
from regatta.common.http.schemas import NO_NUL_PATTERN, PriceParameter
from regatta.items import service
from regatta.items.schemas import (
    SEARCH_MIN_LENGTH,
    ItemCreate,
    ItemPage,
    ItemRead,
    ItemUpdate,
)

router = APIRouter(
    prefix="/items",
    tags=["items"],
    responses=problem_responses(400, 413, 415, 422, 429, 500, 503),
    dependencies=[STRICT_QUERY],
)

StoreDep = Annotated[IdempotencyStore, Depends(idempotency_store(service.SERVICE_NAME))]
ItemId = Annotated[int, Path(description="The item's id.")]
WRITE_ERRORS = problem_responses(401, 403, 404, 409, 412)


@router.post("", status_code=201, response_model=ItemRead, responses=WRITE_ERRORS)
async def create_item(
    item: ItemCreate,
    request: Request,
    database: DatabaseDep,
    cache: CacheDep,
    store: StoreDep,
    principal: WriterDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Create an item. Retry safely with an ``Idempotency-Key``."""
    stored = await service.create_item(
        request=request,
        database=database,
        cache=cache,
        store=store,
        idempotency_key=idempotency_key,
        principal=principal,
        item=item,
    )
    return stored_response(stored)


@router.get("", response_model=ItemPage)
async def list_items(
    database: DatabaseDep,
    page: PageDep,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=NO_NUL_PATTERN,
            # Checked by the service, which says why in its 422.
            json_schema_extra={"minLength": SEARCH_MIN_LENGTH},
            description=(
                f"Name contains (any case), at least {SEARCH_MIN_LENGTH} characters: "
                "a shorter text is a 422."
            ),
        ),
    ] = None,
    min_price: Annotated[PriceParameter | None, Query()] = None,
    max_price: Annotated[PriceParameter | None, Query()] = None,
) -> Response:
    """List items by id, a page at a time."""
    body = await service.list_items(
        database=database, page=page, q=q, min_price=min_price, max_price=max_price
    )
    return json_response(body)


@router.get(
    "/{item_id}",
    response_model=ItemRead,
    responses={**problem_responses(404), **NOT_MODIFIED},
)
async def get_item(
    item_id: ItemId,
    database: DatabaseDep,
    cache: CacheDep,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    """One item, with its ETag (``If-None-Match`` → 304)."""
    entry = await service.get_item(database=database, cache=cache, item_id=item_id)
    return entry_response(entry, if_none_match=if_none_match)


@router.patch("/{item_id}", response_model=ItemRead, responses=WRITE_ERRORS)
async def update_item(
    item_id: ItemId,
    changes: ItemUpdate,
    database: DatabaseDep,
    cache: CacheDep,
    _principal: WriterDep,
    if_match: IfMatchHeader = None,
) -> Response:
    """Change some fields of an item (``If-Match`` → 412 when it changed meanwhile)."""
    entry = await service.update_item(
        database=database,
        cache=cache,
        item_id=item_id,
        changes=changes,
        precondition=parse_if_match(if_match),
    )
    return entry_response(entry)


@router.delete("/{item_id}", status_code=204, responses=WRITE_ERRORS)
async def delete_item(
    item_id: ItemId,
    database: DatabaseDep,
    cache: CacheDep,
    _principal: WriterDep,
    if_match: IfMatchHeader = None,
) -> Response:
    """Delete an item (``If-Match`` → 412 when it changed meanwhile)."""
    await service.delete_item(
        database=database, cache=cache, item_id=item_id, precondition=parse_if_match(if_match)
    )
    return Response(status_code=204)


route_head(router)
