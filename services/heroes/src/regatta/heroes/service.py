"""Rules of the heroes service; the common Resource does the caching and concurrency."""

from __future__ import annotations

from fastapi import Request

from regatta.common.data.db import Database
from regatta.common.data.idempotency import IdempotencyStore, StoredResponse
from regatta.common.http.conditional import Precondition
from regatta.common.http.pagination import PageRequest
from regatta.common.http.problems import invalid_field
from regatta.common.http.resources import Resource
from regatta.common.redis.cache import CachedResponse, ResponseCache
from regatta.heroes.models import Hero, outbox
from regatta.heroes.repository import HeroRepository
from regatta.heroes.schemas import HeroCreate, HeroRead, HeroUpdate

SERVICE_NAME = "heroes"

heroes: Resource[Hero, HeroRead] = Resource(
    name=SERVICE_NAME,
    singular="hero",
    repository=HeroRepository(),
    read_schema=HeroRead,
    outbox=outbox,
)


async def create_hero(
    *,
    request: Request,
    database: Database,
    cache: ResponseCache,
    store: IdempotencyStore,
    idempotency_key: str | None,
    principal: str,
    hero: HeroCreate,
) -> StoredResponse:
    """Create a hero, once per idempotency key."""
    return await heroes.create(
        request=request,
        database=database,
        cache=cache,
        store=store,
        idempotency_key=idempotency_key,
        principal=principal,
        values=hero.model_dump(),
    )


async def get_hero(*, database: Database, cache: ResponseCache, hero_id: int) -> CachedResponse:
    """One hero, rendered (without the secret name)."""
    return await heroes.read(database=database, cache=cache, row_id=hero_id)


async def list_heroes(
    *,
    database: Database,
    page: PageRequest,
    name: str | None,
    name_prefix: str | None,
    min_age: int | None,
    max_age: int | None,
) -> bytes:
    """A page of heroes matching the filters."""
    if min_age is not None and max_age is not None and min_age > max_age:
        raise invalid_field("min_age", "query", "must not exceed max_age", kind="range")
    where = HeroRepository.filters(
        name=name, name_prefix=name_prefix, min_age=min_age, max_age=max_age
    )
    return await heroes.list(database=database, page=page, where=where)


async def update_hero(
    *,
    database: Database,
    cache: ResponseCache,
    hero_id: int,
    changes: HeroUpdate,
    precondition: Precondition | None,
) -> CachedResponse:
    """Change some fields of a hero."""
    return await heroes.update(
        database=database,
        cache=cache,
        row_id=hero_id,
        values=changes.changes(),
        precondition=precondition,
    )


async def delete_hero(
    *, database: Database, cache: ResponseCache, hero_id: int, precondition: Precondition | None
) -> None:
    """Delete a hero."""
    await heroes.delete(database=database, cache=cache, row_id=hero_id, precondition=precondition)
