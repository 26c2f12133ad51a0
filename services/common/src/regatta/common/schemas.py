"""Field types and base schemas shared by every service's ``schemas.py``."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)


def _storable(value: str) -> str:
    # Postgres text cannot hold NUL, and lone surrogates are not UTF-8: refuse both up front
    # rather than fail in the database driver.
    if "\x00" in value:
        msg = "must not contain NUL characters"
        raise ValueError(msg)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        msg = "must be valid Unicode text"
        raise ValueError(msg) from None
    return value


# Use as ``Annotated[str, Field(min_length=1, max_length=200), Storable]``.
Storable = AfterValidator(_storable)

# Money is exact in storage and a JSON number on the wire, as the contract says.
_AS_NUMBER = PlainSerializer(float, return_type=float, when_used="json")
Price = Annotated[
    Decimal,
    Field(gt=0, le=1_000_000_000, max_digits=12, decimal_places=2, allow_inf_nan=False),
    _AS_NUMBER,
]
Tax = Annotated[
    Decimal,
    Field(ge=0, le=1_000_000_000, max_digits=12, decimal_places=2, allow_inf_nan=False),
    _AS_NUMBER,
]


class CreateSchema(BaseModel):
    """A create body: unknown fields are a client error."""

    model_config = ConfigDict(extra="forbid")


class UpdateSchema(BaseModel):
    """A partial update: at least one field, and ``required`` fields may not be set to null."""

    model_config = ConfigDict(extra="forbid")
    required: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _check_fields(self) -> UpdateSchema:
        if not self.model_fields_set:
            msg = "the body must set at least one field"
            raise ValueError(msg)
        nulled = sorted(
            f for f in self.model_fields_set & self.required if getattr(self, f) is None
        )
        if nulled:
            msg = f"may not be null: {', '.join(nulled)}"
            raise ValueError(msg)
        return self

    def changes(self) -> dict[str, Any]:
        """Only the fields the client sent."""
        return self.model_dump(exclude_unset=True)


class ReadSchema(BaseModel):
    """Fields every resource returns."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    version: int = Field(description="Starts at 1 and grows by one on every change.")
    created_at: datetime
    updated_at: datetime
