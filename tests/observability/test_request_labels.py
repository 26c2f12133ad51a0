"""Request metrics are labelled by the template of the route that answered, never the path."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from fastapi.responses import Response
from fastapi.routing import APIRoute
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from regatta.common.telemetry.metrics import UNOBSERVED_PATHS
from tests.conftest import client_for
from tests.lifespan import lifespan
from tests.observability.test_metrics import FACTORIES, samples, serving, value


@pytest.mark.parametrize("name", FACTORIES)
async def test_every_route_labels_its_requests_with_its_template(name: str, tmp_path: Path) -> None:
    app = FACTORIES[name](tmp_path)
    routes = [
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute) and route.path not in UNOBSERVED_PATHS
        for method in sorted(route.methods or ())
    ]
    assert routes
    async with serving(app) as client:
        for method, template in routes:
            path = template
            while "{" in path:  # each parameter filled with an id
                path = path[: path.index("{")] + "1" + path[path.index("}") + 1 :]
            await client.request(method, path)
        text = (await client.get("/metrics")).text
    counted: dict[tuple[str, str], float] = defaultdict(float)
    for (sample, pairs), count in samples(text).items():
        if sample == "http_requests_total":
            labels = dict(pairs)
            counted[labels["method"], labels["handler"]] += count
    for method, template in routes:
        assert counted[method, template] == 1, (method, template)
    assert "/1" not in "".join(handler for _, handler in counted)


async def test_a_path_no_route_matches_is_none_and_a_wrong_method_its_routes(
    tmp_path: Path,
) -> None:
    async with serving(FACTORIES["items"](tmp_path)) as client:
        assert (await client.get("/nope/1")).status_code == 404
        assert (await client.put("/items/1", json={})).status_code == 405
        text = (await client.get("/metrics")).text
    assert value(text, "http_requests_total", handler="none", status="404") == 1
    assert (
        value(text, "http_requests_total", handler="/items/{item_id}", method="PUT", status="405")
        == 1
    )


async def test_a_cache_hit_is_labelled_by_the_route_it_answers_for(tmp_path: Path) -> None:
    async with serving(FACTORIES["items"](tmp_path)) as client:
        created = await client.post("/items", json={"name": "Lamp", "price": 10})
        assert created.status_code == 201
        for _ in range(3):  # the first fills the cache if the create did not; the rest hit it
            assert (await client.get(created.headers["location"])).status_code == 200
        text = (await client.get("/metrics")).text
    assert value(text, "regatta_cache_requests_total", result="hit") >= 2
    read = {"handler": "/items/{item_id}", "method": "GET", "status": "200"}
    assert value(text, "http_requests_total", **read) == 3
    assert 'handler="none"' not in text


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
    # A request that only a slash redirect answers (/items/7/) matched no route: labelled by
    # its path it would make one series per id.
    app = FACTORIES["items"](tmp_path)
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
