"""Rules of the heroes service; the common Resource does the caching and concurrency."""

from __future__ import annotations

from regatta.common.http.problems import invalid_field
from regatta.common.http.resource_routes import Where
from regatta.common.http.resources import Resource
from regatta.heroes.models import Hero, outbox
from regatta.heroes.repository import HeroRepository
from regatta.heroes.schemas import HeroRead

SERVICE_NAME = "heroes"

heroes: Resource[Hero, HeroRead] = Resource(
    name=SERVICE_NAME,
    singular="hero",
    repository=HeroRepository(),
    read_schema=HeroRead,
    outbox=outbox,
)


def list_filters(
    *, name: str | None, name_prefix: str | None, min_age: int | None, max_age: int | None
) -> Where:
    """The list's filters, checked (422): an age range in order."""
    if min_age is not None and max_age is not None and min_age > max_age:
        raise invalid_field("min_age", "query", "must not exceed max_age", kind="range")
    where = HeroRepository.filters(
        name=name, name_prefix=name_prefix, min_age=min_age, max_age=max_age
    )
    return lambda _dialect: where
