"""The items service's HTTP API: its resource declared once, and its list's filters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from regatta.common.http.resource_routes import ResourceRoutes, Where
from regatta.common.http.schemas import NO_NUL_PATTERN, PriceParameter
from regatta.items import service
from regatta.items.schemas import SEARCH_MIN_LENGTH, ItemCreate, ItemPage, ItemUpdate


async def item_filters(
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
) -> Where:
    """The list's filters (dependency)."""
    return service.list_filters(q=q, min_price=min_price, max_price=max_price)


ITEMS = ResourceRoutes(
    resource=service.items,
    create_schema=ItemCreate,
    update_schema=ItemUpdate,
    page_schema=ItemPage,
    id_description="The item's id.",
    filters=item_filters,
)
