"""The heroes service's HTTP API: its resource declared once, and its list's filters."""

from __future__ import annotations

from pydantic import Field

from regatta.common.http.resource_routes import ListQuery, ResourceRoutes, Where
from regatta.common.http.schemas import NO_NUL_PATTERN
from regatta.heroes import service
from regatta.heroes.schemas import AgeParameter, HeroCreate, HeroPage, HeroUpdate


class HeroQuery(ListQuery):
    """The heroes list's query: a page, a name or its start, and an age range."""

    name: str | None = Field(
        None, max_length=100, pattern=NO_NUL_PATTERN, description="Exact name."
    )
    name_prefix: str | None = Field(
        None,
        max_length=100,
        pattern=NO_NUL_PATTERN,
        description="Name starts with (case-sensitive).",
    )
    min_age: AgeParameter | None = None
    max_age: AgeParameter | None = None

    def where(self) -> Where:
        """The filters' WHERE clauses (checked: a 422 for a reversed age range)."""
        return service.list_filters(
            name=self.name, name_prefix=self.name_prefix, min_age=self.min_age, max_age=self.max_age
        )


HEROES = ResourceRoutes(
    resource=service.heroes,
    create_schema=HeroCreate,
    update_schema=HeroUpdate,
    page_schema=HeroPage,
    id_description="The hero's id.",
    query=HeroQuery,
)
