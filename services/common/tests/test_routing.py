"""HEAD wherever GET is routed, query parameters a route does not take refused, routes added."""

from __future__ import annotations

from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from regatta.common.http.pagination import PageQuery
from regatta.common.http.problems import install_problem_handlers
from regatta.common.http.routing import add_routes, check_query, query_parameters, route_head


async def _strict_query(request: Request) -> None:
    check_query(request)  # as a request context does first


def _app() -> FastAPI:
    router = APIRouter(prefix="/things", dependencies=[Depends(_strict_query)])

    @router.get("")
    async def list_things(colour: Annotated[str | None, Query()] = None) -> Response:
        return Response(f'["{colour}"]', media_type="application/json", headers={"ETag": '"7"'})

    @router.post("")
    async def create_thing() -> Response:
        return Response(status_code=201)

    route_head(router)
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(router)
    return app


async def test_head_answers_with_the_get_headers_and_no_body() -> None:
    app = _app()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        got = await client.get("/things", params={"colour": "red"})
        head = await client.head("/things", params={"colour": "red"})
        refused = await client.put("/things")
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == got.headers["etag"]
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
    assert refused.headers["allow"] == "GET, HEAD, POST"
    assert "head" not in app.openapi()["paths"]["/things"]


async def test_unknown_query_parameters_are_422_naming_them() -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=_app()), base_url="http://t"
    ) as client:
        assert (await client.get("/things", params={"colour": "red"})).status_code == 200
        refused = await client.get("/things", params={"color": "red", "limit": 1})
        created = await client.post("/things", params={"dry_run": 1})
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in refused.json()["errors"]] == ["color", "limit"]
    assert "colour" in refused.json()["errors"][0]["message"]
    assert created.status_code == 422


class _ThingQuery(BaseModel):
    size: int = 1
    shade: str | None = Field(None, alias="colour-shade")


async def test_a_query_models_fields_are_the_parameters_it_takes() -> None:
    router = APIRouter(dependencies=[Depends(_strict_query)])

    @router.get("/things")
    async def list_things(query: Annotated[_ThingQuery, Query()]) -> Response:
        return Response(f"{query.size} {query.shade}")

    app = FastAPI()
    install_problem_handlers(app)
    add_routes(app, router)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        taken = await client.get("/things", params={"size": 2, "colour-shade": "dark"})
        refused = await client.get("/things", params={"size": 2, "query": "x", "shade": "dark"})
    assert taken.text == "2 dark"
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["query", "shade"]
    assert "colour-shade, size" in refused.json()["errors"][0]["message"]


async def test_add_routes_puts_a_routers_routes_on_the_app_itself() -> None:
    router = APIRouter(prefix="/things", tags=["things"])

    @router.get("/{thing_id}")
    async def get_thing(thing_id: int) -> Response:
        return Response(str(thing_id))

    app = FastAPI()
    add_routes(app, router)
    added = [r for r in app.router.routes if isinstance(r, APIRoute)]
    assert [(r.path, r.tags) for r in added] == [("/things/{thing_id}", ["things"])]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        assert (await client.get("/things/7")).text == "7"


def test_add_routes_refuses_a_router_with_routers_inside() -> None:
    inner, outer = APIRouter(), APIRouter()

    @inner.get("/x")
    async def get_x() -> Response:
        return Response()

    outer.include_router(inner)
    with pytest.raises(TypeError, match="plain routes"):
        add_routes(FastAPI(), outer)


class _Filters(BaseModel):
    limit: int = Field(20, ge=1, le=100, description="Page size.")
    cursor: str | None = Field(None, pattern=r"^[a-z]+$", description="Where to go on.")
    name: str | None = None
    needed: int


def test_a_query_model_is_documented_as_fastapi_documents_one() -> None:
    app = FastAPI()

    @app.get("/by-fastapi")
    async def by_fastapi(query: Annotated[_Filters, Query()]) -> None:
        del query

    @app.get("/by-itself", openapi_extra=query_parameters(_Filters))
    async def by_itself() -> None:
        pass

    paths = app.openapi()["paths"]
    assert paths["/by-itself"]["get"]["parameters"] == paths["/by-fastapi"]["get"]["parameters"]


async def test_a_query_validated_by_its_handler_is_checked_and_taken_with_head() -> None:
    app = FastAPI()
    install_problem_handlers(app)
    router = APIRouter(dependencies=[Depends(_strict_query)])

    class Page(PageQuery):
        name: str | None = None

    async def listing(request: Request) -> Response:
        return Response(str(Page.of(request).limit))

    router.add_api_route("/things", listing, methods=["GET"], openapi_extra=query_parameters(Page))
    route_head(router)
    add_routes(app, router)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        assert (await client.get("/things?limit=5&name=x")).text == "5"
        assert (await client.head("/things?limit=5")).status_code == 200
        invalid = await client.get("/things?limit=0")
        assert invalid.status_code == 422
        assert invalid.json()["errors"][0]["field"] == "limit"
        assert invalid.json()["errors"][0]["in"] == "query"
        unknown = await client.get("/things?limit=5&colour=red")
        assert unknown.status_code == 422
        assert unknown.json()["errors"][0]["field"] == "colour"
