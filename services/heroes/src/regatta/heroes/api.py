"""HTTP routes of the heroes service: parse, call the service, return."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from regatta.common.data.db import DatabaseDep
from regatta.common.data.idempotency import IdempotencyKeyHeader, IdempotencyStore
from regatta.common.http.auth import WriterDep
from regatta.common.http.conditional import (
    NOT_MODIFIED,
    IfMatchHeader,
    IfNoneMatchHeader,
    parse_if_match,
)
from regatta.common.http.pagination import PageDep
from regatta.common.http.problems import problem_responses
from regatta.common.http.resources import (
    CacheDep,
    entry_response,
    idempotency_store,
    json_response,
    stored_response,
)
from regatta.common.http.routing import STRICT_QUERY, route_head
from regatta.common.http.schemas import NO_NUL_PATTERN
from regatta.heroes import service
from regatta.heroes.schemas import AgeParameter, HeroCreate, HeroPage, HeroRead, HeroUpdate

router = APIRouter(
    prefix="/heroes",
    tags=["heroes"],
    responses=problem_responses(400, 413, 415, 422, 429, 500, 503),
    dependencies=[STRICT_QUERY],
)

StoreDep = Annotated[IdempotencyStore, Depends(idempotency_store(service.SERVICE_NAME))]
HeroId = Annotated[int, Path(description="The hero's id.")]
WRITE_ERRORS = problem_responses(401, 403, 404, 409, 412)


@router.post("", status_code=201, response_model=HeroRead, responses=WRITE_ERRORS)
async def create_hero(
    hero: HeroCreate,
    request: Request,
    database: DatabaseDep,
    cache: CacheDep,
    store: StoreDep,
    principal: WriterDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Create a hero. Retry safely with an ``Idempotency-Key``."""
    stored = await service.create_hero(
        request=request,
        database=database,
        cache=cache,
        store=store,
        idempotency_key=idempotency_key,
        principal=principal,
        hero=hero,
    )
    return stored_response(stored)


@router.get("", response_model=HeroPage)
async def list_heroes(
    database: DatabaseDep,
    page: PageDep,
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
) -> Response:
    """List heroes by id, a page at a time."""
    body = await service.list_heroes(
        database=database,
        page=page,
        name=name,
        name_prefix=name_prefix,
        min_age=min_age,
        max_age=max_age,
    )
    return json_response(body)


@router.get(
    "/{hero_id}",
    response_model=HeroRead,
    responses={**problem_responses(404), **NOT_MODIFIED},
)
async def get_hero(
    hero_id: HeroId,
    database: DatabaseDep,
    cache: CacheDep,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    """One hero, with its ETag (``If-None-Match`` → 304)."""
    entry = await service.get_hero(database=database, cache=cache, hero_id=hero_id)
    return entry_response(entry, if_none_match=if_none_match)


@router.patch("/{hero_id}", response_model=HeroRead, responses=WRITE_ERRORS)
async def update_hero(
    hero_id: HeroId,
    changes: HeroUpdate,
    database: DatabaseDep,
    cache: CacheDep,
    _principal: WriterDep,
    if_match: IfMatchHeader = None,
) -> Response:
    """Change some fields of a hero (``If-Match`` → 412 when it changed meanwhile)."""
    entry = await service.update_hero(
        database=database,
        cache=cache,
        hero_id=hero_id,
        changes=changes,
        precondition=parse_if_match(if_match),
    )
    return entry_response(entry)


@router.delete("/{hero_id}", status_code=204, responses=WRITE_ERRORS)
async def delete_hero(
    hero_id: HeroId,
    database: DatabaseDep,
    cache: CacheDep,
    _principal: WriterDep,
    if_match: IfMatchHeader = None,
) -> Response:
    """Delete a hero (``If-Match`` → 412 when it changed meanwhile)."""
    await service.delete_hero(
        database=database, cache=cache, hero_id=hero_id, precondition=parse_if_match(if_match)
    )
    return Response(status_code=204)


route_head(router)
