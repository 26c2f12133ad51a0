"""The heroes service's HTTP API: its resource declared once, and its list's filters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from regatta.common.http.resource_routes import ResourceRoutes, Where
from regatta.common.http.schemas import NO_NUL_PATTERN
from regatta.heroes import service
from regatta.heroes.schemas import AgeParameter, HeroCreate, HeroPage, HeroUpdate


async def hero_filters(
    name: Annotated[
        str | None, Query(max_length=100, pattern=NO_NUL_PATTERN, description="Exact name.")
    ] = None,
    name_prefix: Annotated[
        str | None,
        Query(
            max_length=100,
            pattern=NO_NUL_PATTERN,
            description="Name starts with (case-sensitive).",
        ),
    ] = None,
    min_age: Annotated[AgeParameter | None, Query()] = None,
    max_age: Annotated[AgeParameter | None, Query()] = None,
) -> Where:
    """The list's filters (dependency)."""
    return service.list_filters(
        name=name, name_prefix=name_prefix, min_age=min_age, max_age=max_age
    )


HEROES = ResourceRoutes(
    resource=service.heroes,
    create_schema=HeroCreate,
    update_schema=HeroUpdate,
    page_schema=HeroPage,
    id_description="The hero's id.",
    filters=hero_filters,
)
