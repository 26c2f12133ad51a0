"""All SQL of the heroes service."""

from __future__ import annotations

from sqlalchemy import ColumnElement

from regatta.common.data.repository import VersionedRepository
from regatta.heroes.models import Hero


class HeroRepository(VersionedRepository[Hero]):
    """Heroes rows."""

    def __init__(self) -> None:
        super().__init__(Hero)

    @staticmethod
    def filters(
        *,
        name: str | None,
        name_prefix: str | None,
        min_age: int | None,
        max_age: int | None,
    ) -> list[ColumnElement[bool]]:
        """WHERE clauses for the list filters, each served by an index."""
        clauses: list[ColumnElement[bool]] = []
        if name is not None:
            clauses.append(Hero.name == name)
        if name_prefix:
            clauses.append(Hero.name.startswith(name_prefix, autoescape=True))
        if min_age is not None:
            clauses.append(Hero.age >= min_age)
        if max_age is not None:
            clauses.append(Hero.age <= max_age)
        return clauses
