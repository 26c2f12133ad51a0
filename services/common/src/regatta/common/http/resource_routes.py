"""One way to declare a resource: :class:`ResourceRoutes` → its five routes (and HEAD).

A service describes its resource — the :class:`Resource`, its create and update schemas, its
page schema, its list's query (a :class:`ListQuery` with its filters), how its id is
described — and :func:`resource_router` builds ``POST /{name}``, ``GET /{name}``,
``GET/PATCH/DELETE /{name}/{id}`` (HEAD with each GET) with the contract's behaviour and
OpenAPI description. The read cache in front of the routes (readcache.py) is built from the
same declarations.

Each handler takes one :class:`RequestContext` (context.py); a write's context checks the key.
The list validates its whole query as one model in one step (``PageQuery.of``).

(No ``from __future__ import annotations`` here: the handlers' annotations are the declared
schemas, which FastAPI must see as objects.)
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from fastapi.params import Depends as DependsParam
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import ColumnElement

from regatta.common.http.conditional import (
    IF_MATCH_DOCUMENTED,
    IF_NONE_MATCH_DOCUMENTED,
    NOT_MODIFIED,
    if_match,
    if_none_match,
    parse_if_match,
)
from regatta.common.http.context import ContextFactory, RequestContext
from regatta.common.http.pagination import PageQuery
from regatta.common.http.problems import problem_responses
from regatta.common.http.resources import (
    IdempotencyKeyHeader,
    Resource,
    entry_response,
    json_response,
    stored_response,
)
from regatta.common.http.routing import query_parameters, route_head
from regatta.common.http.schemas import UpdateSchema

# Given the database's dialect, the WHERE clauses of a list's filters.
Where = Callable[[str], Sequence[ColumnElement[bool]]]


class ListQuery(PageQuery):
    """A list's query parameters: the page, and the filters a resource adds as fields."""

    def where(self) -> Where:
        """The filters' WHERE clauses, checked (a 422 for a range out of order); none here."""
        return lambda _dialect: ()


ROUTER_ERRORS = problem_responses(400, 413, 415, 422, 429, 500, 503)
WRITE_ERRORS = problem_responses(401, 403, 404, 409, 412)


@dataclass(frozen=True)
class ResourceRoutes:
    """A resource as the HTTP API shows it."""

    resource: Resource[Any, Any]
    create_schema: type[BaseModel]
    update_schema: type[UpdateSchema]
    page_schema: type[BaseModel]
    # "The item's id." — the id path parameter's description.
    id_description: str
    # The list's query parameters: limit and cursor, and the filters as fields whose
    # ``where()`` gives the WHERE clauses (its own rules, a range in order, answered with a 422).
    query: type[ListQuery] = ListQuery
    tags: Sequence[str] | None = None  # default: the resource's name
    # More dependencies for every route (run before the handler, on every request: a
    # resource that declares any is not answered by the read cache).
    dependencies: Sequence[DependsParam] = field(default_factory=tuple)
    # Whether the read cache answers its GET /{name}/{id} on a hit.
    read_cache: bool = True

    @property
    def name(self) -> str:
        """The collection's path segment."""
        return self.resource.name

    @property
    def cached(self) -> bool:
        """Whether the read cache may answer for the route (no dependency it would skip)."""
        return self.read_cache and not self.dependencies


def resource_router(routes: ResourceRoutes) -> APIRouter:
    """The five routes (and HEAD) of ``routes``' resource."""
    resource = routes.resource
    name, singular = resource.name, resource.singular
    router = APIRouter(
        prefix=f"/{name}",
        tags=list(routes.tags or [name]),
        responses=ROUTER_ERRORS,
        # Unknown query parameters are refused by the context (ContextFactory).
        dependencies=list(routes.dependencies),
    )
    Reading = Annotated[RequestContext, Depends(ContextFactory(name))]  # noqa: N806
    Writing = Annotated[RequestContext, Depends(ContextFactory(name, "writer"))]  # noqa: N806
    id_name = f"{singular}_id"
    # The path shows the id as {item_id}; the handlers take it as row_id.
    RowId = Annotated[int, Path(alias=id_name, description=routes.id_description)]  # noqa: N806
    Create = routes.create_schema  # noqa: N806
    Update = routes.update_schema  # noqa: N806

    async def create(
        body: Create,  # type: ignore[valid-type]
        context: Writing,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response:
        stored = await resource.create(
            request=context.request,
            database=context.database,
            store=context.store,
            idempotency_key=idempotency_key,
            principal=context.writer,
            values=body.model_dump(),  # type: ignore[attr-defined]
        )
        return stored_response(stored)

    async def list_(context: Reading) -> Response:
        query = routes.query.of(context.request)
        clauses = query.where()(context.database.dialect)
        page = query.page()
        return json_response(
            await resource.list(database=context.database, page=page, where=clauses)
        )

    async def read(row_id: RowId, context: Reading) -> Response:
        entry = await resource.read(database=context.database, cache=context.cache, row_id=row_id)
        return entry_response(entry, if_none_match=if_none_match(context.request.headers))

    async def update(
        row_id: RowId,
        changes: Update,  # type: ignore[valid-type]
        context: Writing,
    ) -> Response:
        entry = await resource.update(
            database=context.database,
            cache=context.cache,
            row_id=row_id,
            values=changes.changes(),  # type: ignore[attr-defined]
            precondition=parse_if_match(if_match(context.request.headers)),
        )
        return entry_response(entry)

    async def delete(row_id: RowId, context: Writing) -> Response:
        await resource.delete(
            database=context.database,
            cache=context.cache,
            row_id=row_id,
            precondition=parse_if_match(if_match(context.request.headers)),
        )
        return Response(status_code=204)

    a, the = _article(singular), singular
    router.add_api_route(
        "",
        create,
        name=f"create_{singular}",
        methods=["POST"],
        status_code=201,
        response_model=resource.read_schema,
        responses=WRITE_ERRORS,
        description=f"Create {a} {the}. Retry safely with an ``Idempotency-Key``.",
    )
    router.add_api_route(
        "",
        list_,
        name=f"list_{name}",
        methods=["GET"],
        response_model=routes.page_schema,
        openapi_extra=query_parameters(routes.query),
        description=f"List {name} by id, a page at a time.",
    )
    router.add_api_route(
        f"/{{{id_name}}}",
        read,
        name=read_route_name(resource),
        methods=["GET"],
        response_model=resource.read_schema,
        responses={**problem_responses(404), **NOT_MODIFIED},
        description=f"One {the}, with its ETag (``If-None-Match`` → 304).",
        openapi_extra=IF_NONE_MATCH_DOCUMENTED,
    )
    router.add_api_route(
        f"/{{{id_name}}}",
        update,
        name=f"update_{singular}",
        methods=["PATCH"],
        response_model=resource.read_schema,
        responses=WRITE_ERRORS,
        description=(
            f"Change some fields of {a} {the} (``If-Match`` → 412 when it changed meanwhile)."
        ),
        openapi_extra=IF_MATCH_DOCUMENTED,
    )
    router.add_api_route(
        f"/{{{id_name}}}",
        delete,
        name=f"delete_{singular}",
        methods=["DELETE"],
        status_code=204,
        responses=WRITE_ERRORS,
        description=f"Delete {a} {the} (``If-Match`` → 412 when it changed meanwhile).",
        openapi_extra=IF_MATCH_DOCUMENTED,
    )
    route_head(router)
    return router


def read_route_name(resource: Resource[Any, Any]) -> str:
    """The name of ``resource``'s ``GET /{name}/{id}`` route (readcache.py answers for it)."""
    return f"get_{resource.singular}"


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"
