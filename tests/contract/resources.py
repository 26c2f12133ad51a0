"""The two versioned resources the contract describes, as data the generic tests run over."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_counter = itertools.count(1)


@dataclass(frozen=True)
class ResourceCase:
    """A resource under test: its prefix, a valid body maker and a valid change."""

    prefix: str
    new: Callable[[], dict[str, Any]]
    change: dict[str, Any]
    public_fields: frozenset[str]

    def __str__(self) -> str:
        return self.prefix.strip("/")


ITEMS = ResourceCase(
    prefix="/items",
    new=lambda: {"name": f"Widget {next(_counter)}", "price": 19.99, "tax": 1.5},
    change={"price": 25.5},
    public_fields=frozenset(
        {"id", "name", "description", "price", "tax", "version", "created_at", "updated_at"}
    ),
)
HEROES = ResourceCase(
    prefix="/heroes",
    new=lambda: {"name": f"Hero {next(_counter)}", "secret_name": "Someone", "age": 30},
    change={"age": 31},
    public_fields=frozenset({"id", "name", "age", "version", "created_at", "updated_at"}),
)
RESOURCES = [ITEMS, HEROES]
