"""Every signal is real: a Prometheus scrapes the running services, every query finds series.

The four processes of a deployment (items, heroes, the notifications API and its worker) run
as they do in production — ``python -m regatta.<service>``, one uvicorn process each — on
Postgres and Redis, exporting traces over OTLP to a small in-test receiver. Debian's Prometheus
scrapes them every second and evaluates the shipped rules; traffic goes through every route and
through deliveries; then every dashboard panel's Prometheus query (but those marked "Cluster
only:", which need cAdvisor or kube-state-metrics) and every recording rule must return series.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from daemons import free_port, log_tail, spawn_child, stop_child
from fastapi.routing import APIRoute
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from regatta.common.http.resource_routes import resource_router
from regatta.heroes.main import SERVICE as HEROES
from regatta.items.main import SERVICE as ITEMS
from regatta.notifications.main import SERVICE as NOTIFICATIONS
from tests.eventually import eventually
from tests.notifications.receiver import Receiver, run_receiver
from tests.observability.conftest import OBSERVABILITY, binary

pytestmark = pytest.mark.postgres

DASHBOARDS = sorted((OBSERVABILITY / "grafana" / "dashboards").glob("*.json"))
RULES = sorted((OBSERVABILITY / "prometheus" / "rules").glob("*.yaml"))
CLUSTER_ONLY = "Cluster only:"
EMBEDDED = Path(__file__).resolve().parents[2] / "infra" / "embedded.py"
# Panels about Redis, which `make up` runs without.
NEEDS_REDIS = "With Redis:"
# What Grafana would put in for the dashboards' variables on a Prometheus outside Kubernetes.
VARIABLES = {"$__rate_interval": "1m", "$namespace": ".*", "$pod": ".*", "$route": ".*"}
READY_SECONDS = 60.0
SERVICES = ("items", "heroes", "notifications")
WORKER = "notifications-worker"
PROCESSES = (*SERVICES, WORKER)
SERIES_SECONDS = 60.0


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


@dataclass
class OtlpSink:
    """An OTLP/HTTP endpoint that keeps every span it is sent."""

    port: int
    spans: list[Span] = field(default_factory=list)

    async def receive(self, request: Request) -> Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.body())
        for resource_spans in export.resource_spans:
            service = next(
                attribute.value.string_value
                for attribute in resource_spans.resource.attributes
                if attribute.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(
                    Span(
                        service,
                        span.name,
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                    )
                    for span in scope_spans.spans
                )
        return Response(
            ExportTraceServiceResponse().SerializeToString(),
            media_type="application/x-protobuf",
        )


@contextlib.asynccontextmanager
async def run_otlp_sink() -> AsyncIterator[OtlpSink]:
    sink = OtlpSink(port=free_port())
    app = Starlette(routes=[Route("/v1/traces", sink.receive, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=sink.port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 -- uvicorn offers a flag, not an event
        await asyncio.sleep(0.01)
    try:
        yield sink
    finally:
        server.should_exit = True
        await task


@dataclass
class Child:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Deployment:
    """The services as separate processes, and the Prometheus scraping them."""

    directory: Path
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], port: int, env: dict[str, str]) -> Child:
        log_path = self.directory / f"{name}.log"
        process = spawn_child(argv, log_path=log_path, env=env, cwd=self.directory)
        child = Child(name, port, process, log_path)
        self.children.append(child)
        return child

    def start_service(self, name: str, module: str, port_variable: str = "PORT") -> Child:
        port = free_port()
        env = {**self.env, port_variable: str(port)}
        return self.start(name, [sys.executable, "-m", module], port, env)

    def child(self, name: str) -> Child:
        return next(child for child in self.children if child.name == name)

    def stop(self) -> None:
        for child in reversed(self.children):
            stop_child(child.process, signal.SIGTERM)


@contextlib.contextmanager
def deployment(directory: Path, env: dict[str, str]) -> Iterator[Deployment]:
    running = Deployment(directory, env)
    try:
        yield running
    finally:
        running.stop()


def clean_environment() -> dict[str, str]:
    # The parent's tracing or multiprocess settings must not leak into the services.
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "PROMETHEUS_"))
    }


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, what: str, within: float, children: list[Child]
) -> None:
    """``eventually(check)``, failing at once with its log if one of ``children`` exits."""

    async def alive_and_checked() -> bool:
        for child in children:
            if child.process.poll() is not None:
                pytest.fail(f"{child.name} exited:\n{log_tail(child.log_path)}")
        return await check()

    def tails() -> str:
        logs = "\n".join(f"--- {c.name}\n{log_tail(c.log_path)}" for c in children)
        return f"({what})\n{logs}"

    await eventually(alive_and_checked, within=within, interval=0.1, what=tails)


def prometheus_config(targets: dict[str, str], rules: list[Path] = RULES) -> str:
    return yaml.safe_dump(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rules],
            "scrape_configs": [
                {"job_name": name, "static_configs": [{"targets": [address]}]}
                for name, address in targets.items()
            ],
        }
    )


def panel_queries(*, skipped: tuple[str, ...] = (CLUSTER_ONLY,)) -> dict[str, str]:
    """Every Prometheus query of every dashboard panel not marked as needing a cluster."""
    queries = {}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            if panel.get("datasource", {}).get("type") != "prometheus":
                continue
            if panel.get("description", "").startswith(skipped):
                continue
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in VARIABLES.items():
                    expr = expr.replace(variable, value)
                queries[f"{path.stem} / {panel['title']} / {target['refId']}"] = expr
    return queries


def recording_rules() -> list[str]:
    return [
        rule["record"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    ]


def api_routes() -> set[tuple[str, str]]:
    return {
        (route.path, method)
        for service in (ITEMS, HEROES, NOTIFICATIONS)
        for router in [
            *(resource_router(declared) for declared in service.resources),
            *([service.router] if service.router is not None else []),
        ]
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }


async def drive_every_route(
    deployment: Deployment, receiver: Receiver, failing: Receiver
) -> set[str]:
    """Call every API route (cache hits and misses, an idempotent replay, deliveries)."""
    delivery_ids: set[str] = set()
    async with httpx.AsyncClient(timeout=10) as client:
        for service, body in (
            ("items", {"name": "Lamp", "price": 19.99}),
            ("heroes", {"name": "Deadpond", "secret_name": "Dive Wilson"}),
        ):
            base = f"{deployment.child(service).url}/{service}"
            if service == "items":
                notifications = f"{deployment.child('notifications').url}/notifications"
                subscription = await client.post(
                    f"{notifications}/subscriptions",
                    json={"event": "item.created", "url": receiver.url()},
                )
                assert subscription.status_code == 201
            key = {"Idempotency-Key": uuid.uuid4().hex}
            created = await client.post(base, json=body, headers=key)
            assert created.status_code == 201, created.text
            replayed = await client.post(base, json=body, headers=key)
            assert replayed.headers["idempotent-replayed"] == "true"
            location = deployment.child(service).url + created.headers["location"]
            assert (await client.get(location)).status_code == 200  # a cache hit
            assert (await client.get(f"{base}/999999")).status_code == 404  # a miss
            assert (await client.get(base)).status_code == 200
            assert (await client.head(location)).status_code == 200  # every GET has a HEAD
            assert (await client.head(base)).status_code == 200
            patched = await client.patch(location, json={"name": "Renamed"})
            assert patched.status_code == 200
            assert (await client.delete(location)).status_code == 204
        notifications = f"{deployment.child('notifications').url}/notifications"
        sends: list[dict[str, object]] = [
            {"channel": "email", "to": "ada@example.com", "subject": "Hi", "body": "Hello"},
            {"channel": "webhook", "url": receiver.url("/direct"), "payload": {"n": 1}},
            {"channel": "webhook", "url": failing.url("/refuses"), "payload": {"n": 2}},
        ]
        for body in sends:
            accepted = await client.post(notifications, json=body)
            assert accepted.status_code == 202, accepted.text
            delivery_ids.add(accepted.json()["id"])
            assert (await client.get(f"{notifications}/{accepted.json()['id']}")).is_success
            assert (await client.head(f"{notifications}/{accepted.json()['id']}")).is_success
        assert (await client.get(notifications)).status_code == 200
        assert (await client.head(notifications)).status_code == 200
        assert (await client.head(f"{notifications}/subscriptions")).status_code == 200
        subscriptions = (await client.get(f"{notifications}/subscriptions")).json()["data"]
        assert subscriptions
        await client.post(
            f"{notifications}/subscriptions", json={"event": "hero.deleted", "url": receiver.url()}
        )
        listed = (await client.get(f"{notifications}/subscriptions")).json()["data"]
        newest = next(s for s in listed if s["event"] == "hero.deleted")
        one = f"{notifications}/subscriptions/{newest['id']}"
        assert (await client.get(one)).status_code == 200
        assert (await client.head(one)).status_code == 200
        deleted = await client.delete(f"{notifications}/subscriptions/{newest['id']}")
        assert deleted.status_code == 204
    return delivery_ids


async def query(client: httpx.AsyncClient, prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = await client.get(f"{prometheus}/api/v1/query", params={"query": expr})
    assert response.status_code == 200, f"{expr}: {response.text}"
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def service_env(postgres_url: str, redis_url: str, sink: OtlpSink) -> dict[str, str]:
    """Test settings, fast retries, loopback webhooks, rate limits, and traces to the sink."""
    return clean_environment() | {
        "ENVIRONMENT": "test",
        "DATABASE_URL": postgres_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"obs{uuid.uuid4().hex[:8]}:",
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "INFO",
        "GRACEFUL_SHUTDOWN_SECONDS": "2",
        "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        # Its checks are Redis round trips and its failures an alert: on, with room to spare.
        "RATE_LIMIT_ENABLED": "true",
        "DELIVERY_MAX_ATTEMPTS": "2",
        "DELIVERY_BACKOFF_BASE_SECONDS": "0.05",
        "DELIVERY_BACKOFF_MAX_SECONDS": "0.1",
        "WORKER_POLL_SECONDS": "0.1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
    }


async def all_ready(children: list[Child]) -> bool:
    async with httpx.AsyncClient(timeout=2) as client:
        for child in children:
            try:
                answer = await client.get(f"{child.url}/readyz")
            except httpx.TransportError:
                return False
            if answer.status_code != 200:
                return False
    return True


async def start_services(running: Deployment) -> None:
    """The three APIs (each migrates its schema), then the worker, which needs those tables."""
    apis = [running.start_service(name, f"regatta.{name}") for name in SERVICES]
    await wait_until(
        lambda: all_ready(apis), what="APIs ready", within=READY_SECONDS, children=apis
    )
    worker = running.start_service(WORKER, "regatta.notifications.worker", "WORKER_PORT")
    await wait_until(
        lambda: all_ready([worker]), what="worker ready", within=READY_SECONDS, children=[worker]
    )


def start_prometheus(running: Deployment, executable: str, rules: list[Path] = RULES) -> str:
    """Prometheus scraping every process each second and evaluating the rules (the shipped)."""
    port = free_port()
    config = running.directory / "prometheus.yml"
    config.write_text(
        prometheus_config(
            {child.name: f"127.0.0.1:{child.port}" for child in running.children}, rules
        )
    )
    running.start(
        "prometheus",
        [
            executable,
            f"--config.file={config}",
            f"--storage.tsdb.path={running.directory / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
        ],
        port,
        clean_environment(),
    )
    return f"http://127.0.0.1:{port}"


async def assert_every_query_has_series(
    client: httpx.AsyncClient,
    prometheus: str,
    running: Deployment,
    queries: dict[str, str] | None = None,
) -> None:
    empty = queries or panel_queries() | {rule: rule for rule in recording_rules()}

    async def every_query_has_series() -> bool:
        for name, expr in list(empty.items()):
            if await query(client, prometheus, expr):
                del empty[name]
        return not empty

    try:
        await wait_until(
            every_query_has_series,
            what="series for every query",
            within=SERIES_SECONDS,
            children=running.children,
        )
    except pytest.fail.Exception:
        pytest.fail("queries without series:\n" + "\n".join(f"{k}: {v}" for k, v in empty.items()))


async def exemplar_trace_ids(client: httpx.AsyncClient, prometheus: str) -> set[str]:
    response = await client.get(
        f"{prometheus}/api/v1/query_exemplars",
        params={
            "query": "http_request_duration_seconds_bucket",
            "start": time.time() - 600,
            "end": time.time() + 60,
        },
    )
    return {
        exemplar["labels"]["trace_id"]
        for series in response.json()["data"]
        for exemplar in series["exemplars"]
    }


async def test_every_dashboard_query_and_recording_rule_returns_series(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    executable = binary("prometheus")
    async with (
        run_otlp_sink() as sink,
        run_receiver() as receiver,
        run_receiver(statuses=[500]) as failing,
    ):
        with deployment(tmp_path, service_env(postgres_url, redis_url, sink)) as running:
            await start_services(running)
            prometheus = start_prometheus(running, executable)
            async with httpx.AsyncClient(timeout=5) as client:

                async def all_up() -> bool:
                    try:
                        answer = await client.get(
                            f"{prometheus}/api/v1/query", params={"query": "up == 1"}
                        )
                    except httpx.TransportError:
                        return False
                    # Prometheus answers 503 until its storage is ready: not up yet.
                    if answer.status_code == httpx.codes.SERVICE_UNAVAILABLE:
                        return False
                    return len(await query(client, prometheus, "up == 1")) == len(PROCESSES)

                # Scrapes before the traffic, so counters are seen rising from their start.
                await wait_until(
                    all_up, what="every target up", within=READY_SECONDS, children=running.children
                )
                delivery_ids = await drive_every_route(running, receiver, failing)

                async def delivered() -> bool:
                    # item.created and the direct webhook; the refused one ran out of attempts.
                    return len(receiver.requests) >= 2 and len(failing.requests) >= 2

                await wait_until(
                    delivered, what="deliveries", within=SERIES_SECONDS, children=running.children
                )

                async def every_route_measured() -> bool:
                    series = await query(client, prometheus, "http_requests_total")
                    seen = {(s["metric"]["handler"], s["metric"]["method"]) for s in series}
                    return api_routes() <= seen

                await wait_until(
                    every_route_measured,
                    what="every route in http_requests_total",
                    within=SERIES_SECONDS,
                    children=running.children,
                )
                await assert_every_query_has_series(client, prometheus, running)
                rules = (await client.get(f"{prometheus}/api/v1/rules")).json()["data"]["groups"]
                health = {rule["name"]: rule["health"] for g in rules for rule in g["rules"]}
                assert set(health.values()) <= {"ok", "unknown"}, health
                # Latency buckets carry exemplars naming the traces of real requests.
                exemplar_traces = await exemplar_trace_ids(client, prometheus)
            # In a thread: while stopping, the services send their last spans to the sink.
            await asyncio.to_thread(running.stop)

    # One trace crosses three processes: the request, the outbox, the stream, the delivery.
    creates = {s.trace_id for s in sink.spans if s.service == "items" and s.name == "POST /items"}
    deliveries = [s for s in sink.spans if s.trace_id in creates and s.name == "deliver webhook"]
    assert [s.service for s in deliveries] == [WORKER]
    assert exemplar_traces
    assert exemplar_traces <= {s.trace_id for s in sink.spans}
    check_log_lines(tmp_path, delivery_ids)


def check_log_lines(directory: Path, delivery_ids: set[str]) -> None:
    """Every process wrote JSON lines only; requests and deliveries each left theirs."""
    requests: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    for name in PROCESSES:
        for raw in (directory / f"{name}.log").read_text().splitlines():
            line = json.loads(raw)
            assert line["service"] in PROCESSES
            assert re.fullmatch(r"[0-9a-f]{32}", line.get("trace_id", "0" * 32))
            if line.get("event") == "request":
                requests.append(line)
            elif line.get("event") == "delivery":
                deliveries.append(line)
    assert {line["route"] for line in requests} >= {path for path, _ in api_routes()}
    assert all(
        {"trace_id", "span_id", "request_id", "status", "duration_ms"} <= line.keys()
        for line in requests
    )
    assert delivery_ids <= {line["notification_id"] for line in deliveries}
    assert {line["outcome"] for line in deliveries} == {"delivered", "retry", "failed"}


async def test_every_dashboard_query_returns_series_on_make_up(tmp_path: Path) -> None:
    """``make up``: one embedded process on SQLite, without Redis, names itself ``regatta``."""
    executable = binary("prometheus")
    port = free_port()
    env = clean_environment() | {
        "ENVIRONMENT": "test",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/regatta.db",
        "LOG_LEVEL": "INFO",
        "GRACEFUL_SHUTDOWN_SECONDS": "2",
        "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "DELIVERY_MAX_ATTEMPTS": "2",
        "DELIVERY_BACKOFF_BASE_SECONDS": "0.05",
        "DELIVERY_BACKOFF_MAX_SECONDS": "0.1",
        "WORKER_POLL_SECONDS": "0.1",
    }
    embedded = str(EMBEDDED)
    async with run_receiver() as receiver, run_receiver(statuses=[500]) as failing:
        with deployment(tmp_path, env) as running:
            process = running.start("regatta", [sys.executable, embedded], port, env)
            await wait_until(
                lambda: all_ready([process]), what="ready", within=READY_SECONDS, children=[process]
            )
            prometheus = start_prometheus(running, executable)
            # The one process serves every service's routes.
            aliases = [Child(name, port, process.process, process.log_path) for name in SERVICES]
            running.children.extend(aliases)
            async with httpx.AsyncClient(timeout=5) as client:

                async def scraped() -> bool:
                    try:
                        return bool(await query(client, prometheus, "regatta_up"))
                    except (httpx.TransportError, AssertionError):
                        return False

                await wait_until(scraped, what="scraped", within=READY_SECONDS, children=[])
                await drive_every_route(running, receiver, failing)
                await assert_every_query_has_series(
                    client,
                    prometheus,
                    running,
                    panel_queries(skipped=(CLUSTER_ONLY, NEEDS_REDIS)),
                )
            for alias in aliases:
                running.children.remove(alias)
