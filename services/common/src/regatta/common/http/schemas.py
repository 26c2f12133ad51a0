"""Field types and base schemas shared by every service's ``schemas.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema


def storable_text(value: str) -> str:
    """``value`` unchanged, or ValueError when no database could store it as text."""
    # Postgres text cannot hold NUL, and lone surrogates are not UTF-8: the driver would fail.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


# A query parameter compared with stored text: NUL can be neither stored nor sent to Postgres.
NO_NUL_PATTERN = "^[^\\x00]*$"


@dataclass(frozen=True)
class CheckedText:
    """A text field's extra check (see Storable): ``check`` validates, ``pattern`` documents."""

    check: Callable[[str], str]
    pattern: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), "pattern": self.pattern}


# Text any database stores (no NUL, valid Unicode): ``Annotated[str, Field(...), Storable]``.
Storable = CheckedText(storable_text, "^[^\\u0000]*$")


def _json_number(value: Any) -> Any:
    # Lax mode would read true as 1 and "12.5" as a number: the OpenAPI document says number.
    if isinstance(value, bool | str):
        raise PydanticCustomError("number_type", "Input should be a JSON number")
    return value


# Use on numeric fields of request bodies (query parameters arrive as text and are parsed).
JsonNumber = BeforeValidator(_json_number)

MAX_MONEY = 1_000_000_000
# Money: exact in storage, a JSON number on the wire, documented so (cents: ``multipleOf``).
_AS_NUMBER = PlainSerializer(float, return_type=float, when_used="json")
_MONEY_SCHEMA = {"type": "number", "maximum": MAX_MONEY, "multipleOf": 0.01}
_PRICE_SCHEMA = WithJsonSchema({**_MONEY_SCHEMA, "exclusiveMinimum": 0})
_TAX_SCHEMA = WithJsonSchema({**_MONEY_SCHEMA, "minimum": 0})
_MONEY = Field(le=MAX_MONEY, max_digits=12, decimal_places=2, allow_inf_nan=False)
PriceParameter = Annotated[Decimal, Field(gt=0), _MONEY, _PRICE_SCHEMA, _AS_NUMBER]
TaxParameter = Annotated[Decimal, Field(ge=0), _MONEY, _TAX_SCHEMA, _AS_NUMBER]
Price = Annotated[PriceParameter, JsonNumber]
Tax = Annotated[TaxParameter, JsonNumber]
# Stored money in a response: checked when it was written (not again), documented as asked.
StoredPrice = Annotated[Decimal, _PRICE_SCHEMA, _AS_NUMBER]
StoredTax = Annotated[Decimal, _TAX_SCHEMA, _AS_NUMBER]


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
            raise ValueError("the body must set at least one field")
        nulled = sorted(
            f for f in self.model_fields_set & self.required if getattr(self, f) is None
        )
        if nulled:
            raise ValueError(f"may not be null: {', '.join(nulled)}")
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Document what the validator enforces: some field, and no null for ``required``."""
        schema = handler.resolve_ref_schema(handler(core_schema))
        schema["minProperties"] = 1
        for name in cls.required:
            field = schema["properties"][name]
            options = [o for o in field.pop("anyOf", []) if o.get("type") != "null"]
            if len(options) == 1:
                field.update(options[0])
            elif options:
                field["anyOf"] = options
        return schema

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
