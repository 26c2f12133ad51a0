"""Request and response bodies of the heroes service."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, Field

from regatta.common.http.schemas import CreateSchema, JsonNumber, ReadSchema, Storable, UpdateSchema

Name = Annotated[str, Field(min_length=1, max_length=100), Storable]
SecretName = Annotated[str, Field(min_length=1, max_length=100), Storable]
AgeParameter = Annotated[int, Field(ge=0, le=10_000)]
Age = Annotated[AgeParameter, JsonNumber]


class HeroCreate(CreateSchema):
    """A new hero."""

    name: Name
    secret_name: SecretName = Field(description="Write-only: never returned.")
    age: Age | None = None


class HeroUpdate(UpdateSchema):
    """Any subset of a hero's fields; ``name`` and ``secret_name`` may not be null."""

    required: ClassVar[frozenset[str]] = frozenset({"name", "secret_name"})

    name: Name | None = None
    secret_name: SecretName | None = Field(default=None, description="Write-only.")
    age: Age | None = None


class HeroRead(ReadSchema):
    """A hero as the API returns it: no ``secret_name``, ever."""

    name: str
    age: int | None


class HeroPage(BaseModel):
    """One page of heroes."""

    data: list[HeroRead]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )
