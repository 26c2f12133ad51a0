"""The items service's HTTP API: its resource declared once, and its list's filters."""

from __future__ import annotations

from pydantic import Field

from regatta.common.http.resource_routes import ListQuery, ResourceRoutes, Where
from regatta.common.http.schemas import NO_NUL_PATTERN, PriceParameter
from regatta.items import service
from regatta.items.schemas import SEARCH_MIN_LENGTH, ItemCreate, ItemPage, ItemUpdate


class ItemQuery(ListQuery):
    """The items list's query: a page, a name search and a price range."""

    q: str | None = Field(
        None,
        max_length=200,
        pattern=NO_NUL_PATTERN,
        # Checked by the service, which says why in its 422.
        json_schema_extra={"minLength": SEARCH_MIN_LENGTH},
        description=(
            f"Name contains (any case), at least {SEARCH_MIN_LENGTH} characters: "
            "a shorter text is a 422."
        ),
    )
    min_price: PriceParameter | None = None
    max_price: PriceParameter | None = None

    def where(self) -> Where:
        """The filters' WHERE clauses (checked: a 422 for a short search or a reversed range)."""
        return service.list_filters(q=self.q, min_price=self.min_price, max_price=self.max_price)


ITEMS = ResourceRoutes(
    resource=service.items,
    create_schema=ItemCreate,
    update_schema=ItemUpdate,
    page_schema=ItemPage,
    id_description="The item's id.",
    query=ItemQuery,
)
