"""Route-level conventions every service's router follows: HEAD with GET, no unknown parameters."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.responses import Response

from regatta.common.http.problems import invalid_fields


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Add ``router``'s routes to ``app``'s own list (FastAPI wraps an included router's)."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"only a router of plain routes joins the app this way, not {route!r}")
    app.router.routes.extend(router.routes)


class _HeadRoute(APIRoute):
    """Run the GET handler and send its status and headers without the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def head(request: Request) -> Response:
            response = await handler(request)
            bodiless = Response(status_code=response.status_code, background=response.background)
            # The GET's headers, Content-Length included, as RFC 9110 allows for HEAD.
            bodiless.raw_headers = response.raw_headers
            return bodiless

        return head


def route_head(router: APIRouter) -> None:
    """Answer HEAD on every GET route of ``router`` (declared so far), undocumented."""
    for route in list(router.routes):
        if not isinstance(route, APIRoute) or "GET" not in (route.methods or ()):
            continue
        router.add_api_route(
            route.path.removeprefix(router.prefix),
            route.endpoint,
            methods=["HEAD"],
            response_model=route.response_model,
            status_code=route.status_code,
            response_class=route.response_class,
            # The router adds its own dependencies to every route it creates.
            dependencies=[d for d in route.dependencies if d not in router.dependencies],
            include_in_schema=False,
            openapi_extra=route.openapi_extra,  # its documented query parameters are taken too
            name=f"{route.name}_head",
            route_class_override=_HeadRoute,
        )


def _query_names(dependant: Dependant) -> set[str]:
    names: set[str] = set()
    for field in dependant.query_params:
        model = field.field_info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):  # a query model's fields
            names |= {info.alias or name for name, info in model.model_fields.items()}
        else:
            names.add(field.alias)
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names


def check_query(request: Request) -> None:
    """Refuse (422) query parameters the matched route does not declare."""
    if not request.scope["query_string"]:
        return
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    # A few nodes, cheaper than a cache lookup; and those of a query the handler validates itself.
    documented = (route.openapi_extra or {}).get("parameters", ())
    taken = _query_names(route.dependant)
    taken |= {p["name"] for p in documented if p.get("in") == "query"}
    unknown = sorted(set(request.query_params) - taken)
    if unknown:
        listed = ", ".join(sorted(taken)) or "none"
        raise invalid_fields(
            unknown, "query", f"unknown query parameter (this URL takes: {listed})", kind="extra"
        )


def query_parameters(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model``'s fields as query parameters, as FastAPI would."""
    schema = model.model_json_schema()
    if "$defs" in schema:
        msg = f"{model.__name__}: only fields of plain types document as query parameters"
        raise ValueError(msg)
    required = set(schema.get("required", ()))
    parameters = []
    for name, field in schema["properties"].items():
        # FastAPI leaves a default of null out of a parameter's schema.
        shown = {key: v for key, v in field.items() if (key, v) != ("default", None)}
        parameter = {"name": name, "in": "query", "required": name in required, "schema": shown}
        if "description" in shown:
            parameter["description"] = shown["description"]
        parameters.append(parameter)
    return {"parameters": parameters}
