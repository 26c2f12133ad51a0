"""Request and response bodies of the items service."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, Field

from regatta.common.http.schemas import (
    CreateSchema,
    Price,
    ReadSchema,
    Storable,
    StoredPrice,
    StoredTax,
    Tax,
    UpdateSchema,
)

# The shortest text ``q`` searches for: the trigram index serves three characters or more;
# anything shorter would read every row.
SEARCH_MIN_LENGTH = 3

Name = Annotated[str, Field(min_length=1, max_length=200), Storable]
Description = Annotated[str, Field(max_length=2000), Storable]


class ItemCreate(CreateSchema):
    """A new item."""

    name: Name
    description: Description | None = None
    price: Price
    tax: Tax | None = None


class ItemUpdate(UpdateSchema):
    """Any subset of an item's fields; ``name`` and ``price`` may not be null."""

    required: ClassVar[frozenset[str]] = frozenset({"name", "price"})

    name: Name | None = None
    description: Description | None = None
    price: Price | None = None
    tax: Tax | None = None


class ItemRead(ReadSchema):
    """An item as the API returns it."""

    name: str
    description: str | None
    price: StoredPrice
    tax: StoredTax | None


class ItemPage(BaseModel):
    """One page of items."""

    data: list[ItemRead]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )
