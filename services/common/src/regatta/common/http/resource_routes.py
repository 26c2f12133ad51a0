"""One way to declare a resource: :class:`ResourceRoutes` → its five routes (and HEAD)."""

# No ``from __future__ import annotations``: FastAPI must see the declared schemas as objects.

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import ColumnElement

from regatta.common.http.conditional import (
    IF_MATCH_DOCUMENTED,
    IF_NONE_MATCH_DOCUMENTED,
    NOT_MODIFIED,
)
from regatta.common.http.context import ContextFactory, RequestContext
from regatta.common.http.pagination import PageQuery
from regatta.common.http.problems import problem_responses
from regatta.common.http.resources import (
    JSON_MEDIA_TYPE,
    IdempotencyKeyHeader,
    Resource,
    entry_response,
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
    id_description: str  # the id path parameter's: "The item's id."
    query: type[ListQuery] = ListQuery  # the list's page and filters
    read_cache: bool = True  # whether the read cache answers hits of its GET /{name}/{id}


def resource_router(routes: ResourceRoutes) -> APIRouter:
    """The five routes (and HEAD) of ``routes``' resource."""
    resource = routes.resource
    name, singular = resource.name, resource.singular
    # Unknown query parameters are refused by the context (ContextFactory), not by the router.
    router = APIRouter(prefix=f"/{name}", tags=[name], responses=ROUTER_ERRORS)
    Reading = Annotated[RequestContext, Depends(ContextFactory(name))]  # noqa: N806
    Writing = Annotated[RequestContext, Depends(ContextFactory(name, "writer"))]  # noqa: N806
    id_name = f"{singular}_id"
    # The path shows the id as {item_id}; the handlers take it as row_id.
    RowId = Annotated[int, Path(alias=id_name, description=routes.id_description)]  # noqa: N806
    a = "an" if singular[:1].lower() in "aeiou" else "a"
    changed = "(``If-Match`` → 412 when it changed meanwhile)"

    @router.post(
        "",
        name=f"create_{singular}",
        status_code=201,
        response_model=resource.read_schema,
        responses=WRITE_ERRORS,
        description=f"Create {a} {singular}. Retry safely with an ``Idempotency-Key``.",
    )
    async def create(
        body: routes.create_schema,  # type: ignore[name-defined]
        context: Writing,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response:
        return stored_response(await resource.create(context, idempotency_key, body.model_dump()))

    @router.get(
        "",
        name=f"list_{name}",
        response_model=routes.page_schema,
        openapi_extra=query_parameters(routes.query),
        description=f"List {name} by id, a page at a time.",
    )
    async def list_(context: Reading) -> Response:
        query = routes.query.of(context.request)
        where = query.where()(context.database.dialect)
        body = await resource.list(database=context.database, page=query.page(), where=where)
        return Response(body, media_type=JSON_MEDIA_TYPE)

    @router.get(
        f"/{{{id_name}}}",
        name=read_route_name(resource),
        response_model=resource.read_schema,
        responses={**problem_responses(404), **NOT_MODIFIED},
        description=f"One {singular}, with its ETag (``If-None-Match`` → 304).",
        openapi_extra=IF_NONE_MATCH_DOCUMENTED,
    )
    async def read(row_id: RowId, context: Reading) -> Response:
        entry = await resource.read(context, row_id)
        return entry_response(entry, if_none_match=context.request.headers.get("if-none-match"))

    @router.patch(
        f"/{{{id_name}}}",
        name=f"update_{singular}",
        response_model=resource.read_schema,
        responses=WRITE_ERRORS,
        description=f"Change some fields of {a} {singular} {changed}.",
        openapi_extra=IF_MATCH_DOCUMENTED,
    )
    async def update(
        row_id: RowId,
        changes: routes.update_schema,  # type: ignore[name-defined]
        context: Writing,
    ) -> Response:
        return entry_response(await resource.update(context, row_id, changes.changes()))

    @router.delete(
        f"/{{{id_name}}}",
        name=f"delete_{singular}",
        status_code=204,
        responses=WRITE_ERRORS,
        description=f"Delete {a} {singular} {changed}.",
        openapi_extra=IF_MATCH_DOCUMENTED,
    )
    async def delete(row_id: RowId, context: Writing) -> Response:
        await resource.delete(context, row_id)
        return Response(status_code=204)

    route_head(router)
    return router


def read_route_name(resource: Resource[Any, Any]) -> str:
    """The name of ``resource``'s ``GET /{name}/{id}`` route (readcache.py answers for it)."""
    return f"get_{resource.singular}"
