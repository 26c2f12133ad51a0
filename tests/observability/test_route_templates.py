"""Request metrics are labelled by the same route template the instrumentator would choose."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import Response
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_fastapi_instrumentator import routing
from starlette.requests import Request
from starlette.routing import Mount, Route, WebSocketRoute

from regatta.common.http.route_templates import RouteTemplates, TemplatedMetricsMiddleware
from tests.conftest import client_for
from tests.lifespan import lifespan
from tests.observability.test_metrics import FACTORIES, value

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "BREW")
OTHER_PATHS = (
    "/",
    "/nope",
    "//items",
    "/items/",
    "/items/1/",
    "/items/1/extra",
    "/ITEMS/1",
    "/items/%31",
    "/heroes/",
    "/notifications/x/y",
    "/docs/",
    "/metrics/",
)


def paths_of(app: FastAPI) -> set[str]:
    """Every route's template filled in a few ways, and paths next to them."""
    paths = set(OTHER_PATHS)
    for route in routing._effective_routes(list(app.routes)):
        template = getattr(route, "path", "/")
        for filler in ("1", "abc", "0", "-1", "a%2Fb", "1.5"):
            filled = template
            while "{" in filled:
                start, end = filled.index("{"), filled.index("}")
                filled = filled[:start] + filler + filled[end + 1 :]
            paths |= {filled, filled + "/", filled + "/x", filled.upper()}
    return paths


def scope_of(app: FastAPI, method: str, path: str, root_path: str = "") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": root_path + path,
        "root_path": root_path,
        "query_string": b"",
        "headers": [],
        "app": app,
    }


@pytest.mark.parametrize("name", FACTORIES)
def test_every_request_gets_the_instrumentators_template(name: str, tmp_path: Path) -> None:
    app = FACTORIES[name](tmp_path)
    templates = RouteTemplates.of(app.routes)
    assert templates is not None
    compared, named = 0, 0
    for path in paths_of(app):
        for method in METHODS:
            for root_path in ("", "/api"):
                scope = scope_of(app, method, path, root_path)
                # The instrumentator's matching (without its redirect case: see below).
                expected = routing._get_route_name(scope, list(app.routes))
                assert templates.resolve(scope) == expected, (method, root_path, path)
                compared += 1
                named += expected is not None
    assert compared > 500
    assert named > 50


def test_the_first_full_match_wins_else_the_first_partial_one() -> None:
    async def endpoint(request: Request) -> Response:
        return Response()

    app = FastAPI()
    app.router.routes.extend(
        [
            Route("/a/{x}", endpoint, methods=["POST"]),
            Route("/a/b", endpoint, methods=["GET"]),
            Route("/a/{y}", endpoint, methods=["GET", "DELETE"]),
            Route("/any", endpoint, methods=None),
            WebSocketRoute("/a/b", endpoint),
        ]
    )
    templates = RouteTemplates.of(app.routes)
    assert templates is not None
    cases = {
        ("GET", "/a/b"): "/a/b",
        ("HEAD", "/a/b"): "/a/b",
        ("POST", "/a/b"): "/a/{x}",
        ("DELETE", "/a/b"): "/a/{y}",
        ("PUT", "/a/b"): "/a/{x}",  # no full match: the first partial one
        ("PUT", "/a/c"): "/a/{x}",
        ("BREW", "/any"): "/any",
        ("GET", "/b"): None,
    }
    for (method, path), template in cases.items():
        scope = scope_of(app, method, path)
        assert routing.get_route_name(Request(scope), should_include_root_path=False) == template
        assert templates.resolve(scope) == template, (method, path)


def test_routes_it_cannot_read_keep_the_instrumentators_resolver() -> None:
    async def endpoint(request: Request) -> Response:
        return Response()

    inner = FastAPI()
    inner.get("/x/{n}")(endpoint)
    app = FastAPI()
    app.get("/items/{n}")(endpoint)
    app.mount("/sub", inner)
    assert any(isinstance(route, Mount) for route in app.routes)
    assert RouteTemplates.of(app.routes) is None
    middleware = TemplatedMetricsMiddleware(app, registry=None)
    for path, expected in (("/sub/x/1", ("/sub/x/{n}", True)), ("/items/1", ("/items/{n}", True))):
        assert middleware._get_handler(Request(scope_of(app, "GET", path))) == expected


async def test_routes_added_after_the_first_request_are_named(tmp_path: Path) -> None:
    app = FACTORIES["regatta"](tmp_path)
    async with lifespan(app), client_for(app) as client:
        assert (await client.get("/items/1")).status_code == 404

        async def late() -> Response:
            return Response(status_code=204)

        app.add_api_route("/late/{thing}", late)
        assert (await client.get("/late/1")).status_code == 204
        text = (await client.get("/metrics")).text
    assert value(text, "http_requests_total", handler="/late/{thing}", status="204") == 1
    assert value(text, "http_requests_total", handler="/items/{item_id}", status="404") == 1


async def test_a_redirected_path_is_not_a_label(tmp_path: Path) -> None:
    # The instrumentator labels a request that only a slash redirect answers with its path
    # (/items/7/): one series per id. Here it is an unmatched request, labelled "none".
    app = FACTORIES["items"](tmp_path)
    scope = scope_of(app, "GET", "/items/7/")
    assert routing.get_route_name(Request(scope), should_include_root_path=False) == "/items/7/"
    async with lifespan(app), client_for(app) as client:
        for item_id in range(5):
            redirected = await client.get(f"/items/{item_id}/", follow_redirects=False)
            assert redirected.status_code == 307
        text = (await client.get("/metrics")).text
    assert "/items/1/" not in text
    assert value(text, "http_requests_total", handler="none", status="307") == 5


async def test_fastapi_does_not_measure_requests_a_second_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a global OpenTelemetry meter provider (as `opentelemetry-instrument` installs one),
    # FastAPI's own telemetry would record http.server.request.duration beside /metrics.
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr("opentelemetry.metrics.get_meter_provider", lambda: provider)
    app = FACTORIES["items"](tmp_path)
    async with lifespan(app), client_for(app) as client:
        assert (await client.get("/items/1")).status_code == 404
        text = (await client.get("/metrics")).text
    assert value(text, "http_requests_total", handler="/items/{item_id}", status="404") == 1
    data = reader.get_metrics_data()
    names = {
        metric.name
        for resource in (data.resource_metrics if data is not None else [])
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert "http.server.request.duration" not in names
    provider.shutdown()
