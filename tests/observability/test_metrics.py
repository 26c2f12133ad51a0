"""``/metrics`` of every process: the platform's own metrics, route templates, multi-process."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemons import free_port, spawn_child, stop_child, wait_answering
from fastapi import FastAPI
from fastapi.responses import Response
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import exc as sa_exc
from sqlalchemy import literal_column, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.sql import Select

from embedded import create_embedded_app
from regatta.common.data.db import Database, create_database
from regatta.common.redis.cache import RedisCache
from regatta.common.redis.pipelined import Endpoint, PipelinedRedis
from regatta.common.settings import Environment, ServiceSettings
from regatta.common.telemetry import tracing
from regatta.common.telemetry.metrics import PlatformMetrics
from regatta.heroes.main import create_app as create_heroes
from regatta.heroes.settings import HeroesSettings
from regatta.items.main import create_app as create_items
from regatta.items.settings import ItemsSettings
from regatta.notifications.main import create_app as create_notifications
from regatta.notifications.settings import NotificationsSettings
from regatta.notifications.worker import create_worker_app
from tests.conftest import client_for
from tests.lifespan import lifespan
from tests.observability.conftest import Spans, TracedAppFactory

# What every process exports, whether or not it has seen the matching event yet.
PLATFORM_FAMILIES = {
    "http_requests",
    "http_request_duration_seconds",
    "regatta_rate_limited_requests",
    "regatta_cache_requests",
    "regatta_db_pool_size",
    "regatta_db_pool_checked_out",
    "regatta_idempotency_requests",
    "regatta_outbox_backlog",
    "regatta_outbox_oldest_age_seconds",
    "regatta_outbox_relayed",
    "regatta_outbox_relay_lag_seconds",
    "regatta_outbox_relay_errors",
    "regatta_up",
    "process_cpu_seconds",
    "process_resident_memory_bytes",
}
# The notifications workers' own (regatta.notifications.metrics): exported only where they
# run, so that with every worker gone the queue's series vanish rather than read 0.
WORKER_FAMILIES = {
    "regatta_stream_consumer_lag",
    "regatta_stream_pending",
    "regatta_events_consumed",
    "regatta_event_lag_seconds",
    "regatta_deliveries",
    "regatta_delivery_attempt_duration_seconds",
    "regatta_delivery_latency_seconds",
    "regatta_delivery_attempts",
    "regatta_delivery_backlog",
    "regatta_delivery_oldest_due_seconds",
}
RUNS_WORKERS = {"notifications-worker", "regatta"}
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def sqlite_settings(tmp_path: Path, **overrides: object) -> NotificationsSettings:
    return NotificationsSettings(
        environment=Environment.TEST,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/regatta.db",
        **overrides,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with lifespan(app), client_for(app) as client:
        yield client


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    found = [v for (n, ls), v in samples(text).items() if n == name and wanted <= ls]
    assert len(found) == 1, (name, labels, found)
    return found[0]


FACTORIES: dict[str, Callable[[Path], FastAPI]] = {
    "items": lambda tmp: create_items(ItemsSettings(**sqlite_settings(tmp).model_dump())),
    "heroes": lambda tmp: create_heroes(HeroesSettings(**sqlite_settings(tmp).model_dump())),
    "notifications": lambda tmp: create_notifications(sqlite_settings(tmp)),
    "notifications-worker": lambda tmp: create_worker_app(sqlite_settings(tmp)),
    "regatta": lambda tmp: create_embedded_app(sqlite_settings(tmp)),
}


@pytest.mark.parametrize("name", FACTORIES)
async def test_every_process_exports_the_platform_metrics(name: str, tmp_path: Path) -> None:
    async with serving(FACTORIES[name](tmp_path)) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    families = {family.name for family in text_string_to_metric_families(response.text)}
    assert families >= PLATFORM_FAMILIES
    assert value(response.text, "process_cpu_seconds_total", service_name=name) > 0
    assert value(response.text, "regatta_up", service_name=name) == 1
    if name not in RUNS_WORKERS:
        assert not families & WORKER_FAMILIES
        return
    assert families >= WORKER_FAMILIES
    # Zero is an answer: every delivery outcome at 0 before the first attempt.
    for outcome in ("delivered", "retry", "failed"):
        assert (
            value(response.text, "regatta_deliveries_total", outcome=outcome, channel="email") == 0
        )


async def test_requests_are_labelled_by_route_template_with_millisecond_buckets(
    tmp_path: Path,
) -> None:
    app = create_embedded_app(sqlite_settings(tmp_path))

    async def limited() -> Response:
        return Response(status_code=429)

    # Whatever refuses a request with 429 is counted as rate-limiting.
    app.add_api_route("/items/limited/now", limited)
    async with serving(app) as client:
        for item_id in (1, 2, 3, 4):
            assert (await client.get(f"/items/{item_id}")).status_code == 404
        assert (await client.get("/items/limited/now")).status_code == 429
        assert (await client.get("/livez")).status_code == 200
        text = (await client.get("/metrics")).text
    route = {"service_name": "items", "handler": "/items/{item_id}", "method": "GET"}
    assert value(text, "http_requests_total", status="404", **route) == 4
    assert "/items/1" not in text
    for bound in ("0.001", "0.0025", "0.25", "10.0", "+Inf"):
        assert value(text, "http_request_duration_seconds_bucket", le=bound, **route) <= 4
    assert value(text, "http_request_duration_seconds_count", **route) == 4
    assert value(text, "regatta_rate_limited_requests_total", service_name="items") == 1
    assert value(text, "regatta_rate_limited_requests_total", service_name="heroes") == 0
    assert 'handler="/livez"' not in text  # probes are not measured


async def test_every_route_starts_at_zero_for_its_success_and_for_500(tmp_path: Path) -> None:
    # rate() only sees an increase between two samples: a 5xx series made by the first error
    # would hide that error from the error ratios.
    async with serving(create_embedded_app(sqlite_settings(tmp_path))) as client:
        text = (await client.get("/metrics")).text
    created = {"service_name": "heroes", "handler": "/heroes", "method": "POST"}
    assert value(text, "http_requests_total", status="201", **created) == 0
    assert value(text, "http_requests_total", status="500", **created) == 0
    accepted = {"service_name": "notifications", "handler": "/notifications", "method": "POST"}
    assert value(text, "http_requests_total", status="202", **accepted) == 0
    read = {"service_name": "items", "handler": "/items/{item_id}", "method": "GET"}
    assert value(text, "http_requests_total", status="500", **read) == 0
    assert value(text, "http_request_duration_seconds_count", **read) == 0
    assert 'handler="/metrics"' not in text


async def test_cache_idempotency_and_pool_are_measured(tmp_path: Path) -> None:
    app = create_embedded_app(sqlite_settings(tmp_path))
    async with serving(app) as client:
        key = {"Idempotency-Key": "k-1"}
        created = await client.post("/heroes", json={"name": "A", "secret_name": "B"}, headers=key)
        replayed = await client.post("/heroes", json={"name": "A", "secret_name": "B"}, headers=key)
        assert replayed.headers["idempotent-replayed"] == "true"
        reused = await client.post("/heroes", json={"name": "C", "secret_name": "D"}, headers=key)
        assert reused.status_code == 422
        for _ in range(2):  # a create leaves the cache alone: the first read fills it
            assert (await client.get(created.headers["location"])).status_code == 200
        assert (await client.get("/heroes/424242")).status_code == 404
        text = (await client.get("/metrics")).text
    heroes = {"service_name": "heroes"}
    for outcome, count in (("stored", 1), ("replayed", 1), ("mismatch", 1), ("conflict", 0)):
        assert value(text, "regatta_idempotency_requests_total", outcome=outcome, **heroes) == count
    assert value(text, "regatta_cache_requests_total", result="hit", **heroes) == 1
    assert value(text, "regatta_cache_requests_total", result="miss", **heroes) == 2
    assert value(text, "regatta_db_pool_size", service_name="regatta") >= 1
    assert value(text, "regatta_db_pool_checked_out", service_name="regatta") >= 0


async def test_many_apps_in_one_process_each_have_their_own_registry(tmp_path: Path) -> None:
    apps = [create_embedded_app(sqlite_settings(tmp_path)) for _ in range(3)]
    async with serving(apps[0]) as client:
        await client.get("/items")
        first = (await client.get("/metrics")).text
    async with serving(apps[1]) as client:
        second = (await client.get("/metrics")).text
    counted = 'http_requests_total{handler="/items",method="GET",service_name="items",status="200"}'
    assert f"{counted} 1.0" in first
    assert f"{counted} 0.0" in second


async def test_openmetrics_scrapes_get_trace_exemplars(
    start_traced: TracedAppFactory, spans: Spans
) -> None:
    async with start_traced() as app, client_for(app) as client:
        await client.get("/items")
        response = await client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    request = next(s for s in spans.finished() if s.name == "GET /items")
    exemplar = f'# {{trace_id="{request.context.trace_id:032x}"}}'
    assert any(
        line.startswith("http_request_duration_seconds_bucket") and exemplar in line
        for line in response.text.splitlines()
    )
    assert response.text.rstrip().endswith("# EOF")


def test_tracing_is_asked_for_only_by_the_standard_variables() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert not tracing.tracing_requested({})
    assert tracing.tracing_requested(endpoint)
    assert tracing.tracing_requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c"})
    assert tracing.tracing_requested({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.tracing_requested({**endpoint, "OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.tracing_requested({**endpoint, "OTEL_SDK_DISABLED": "true"})
    # Only OTLP over HTTP/protobuf ships: asking for gRPC leaves tracing off, loudly.
    assert tracing.exporters_from_environment({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) is None
    assert tracing.exporters_from_environment({"OTEL_TRACES_EXPORTER": "zipkin"}) is None


def test_the_sampler_is_parent_based_by_ratio_and_never_roots_a_trace_in_a_client_span() -> None:
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags  # noqa: PLC0415

    never = tracing.sampler_from_environment({"OTEL_TRACES_SAMPLER_ARG": "0"})
    always = tracing.sampler_from_environment({"OTEL_TRACES_SAMPLER_ARG": "1"})
    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    sampled_parent = trace.set_span_in_context(
        NonRecordingSpan(SpanContext(trace_id, 1, is_remote=True, trace_flags=TraceFlags(1)))
    )

    def decide(sampler: Sampler, kind: SpanKind, parent: Context | None = None) -> Decision:
        decision: Decision = sampler.should_sample(parent, trace_id, "span", kind).decision
        return decision

    assert decide(never, SpanKind.SERVER) is Decision.DROP
    assert decide(never, SpanKind.SERVER, sampled_parent) is Decision.RECORD_AND_SAMPLE
    assert decide(always, SpanKind.SERVER) is Decision.RECORD_AND_SAMPLE
    assert decide(always, SpanKind.CLIENT) is Decision.DROP
    assert decide(always, SpanKind.CLIENT, sampled_parent) is Decision.RECORD_AND_SAMPLE
    assert decide(never, SpanKind.CLIENT, sampled_parent) is Decision.RECORD_AND_SAMPLE


@contextmanager
def items_process(env: dict[str, str], directory: Path, name: str) -> Iterator[str]:
    port = free_port()
    log_path = directory / f"{name}.log"
    process = spawn_child(
        [sys.executable, "-m", "regatta.items"],
        log_path=log_path,
        env={**env, "PORT": str(port)},
        cwd=directory,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(process, f"{url}/readyz", log_path=log_path)
    except BaseException:
        stop_child(process)
        raise
    try:
        yield url
    finally:
        stop_child(process)


def test_processes_serving_together_report_their_sum(tmp_path: Path) -> None:
    shared = tmp_path / "multiproc"
    shared.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "PROMETHEUS_"))
    } | {
        "PROMETHEUS_MULTIPROC_DIR": str(shared),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/shared.db",
        "ENVIRONMENT": "test",
        "GRACEFUL_SHUTDOWN_SECONDS": "1",
    }
    route = {"handler": "/items", "method": "GET", "status": "200"}
    with items_process(env, tmp_path, "first") as first:
        with items_process(env, tmp_path, "second") as second:
            for url, calls in ((first, 3), (second, 2)):
                for _ in range(calls):
                    assert httpx.get(f"{url}/items").status_code == 200
            for url in (first, second):
                text = httpx.get(f"{url}/metrics").text
                assert value(text, "http_requests_total", **route) == 5
            both = value(httpx.get(f"{first}/metrics").text, "regatta_db_pool_size")
        # The second process stopped: its live gauges leave the sum, its counts stay.
        text = httpx.get(f"{first}/metrics").text
        assert value(text, "regatta_db_pool_size") == both / 2
        assert value(text, "http_requests_total", **route) == 5


async def test_statements_pool_waits_and_pool_timeouts_are_measured(tmp_path: Path) -> None:
    metrics = PlatformMetrics(service_name="items")
    registry = metrics.registry
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path}/pool.db", pool_size=1, max_overflow=0, pool_timeout=0.05
    )
    database = Database(engine)
    metrics.sample_pool(database)
    metrics.sample_pool(database)  # instrumented once, however often sampled
    try:
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            with pytest.raises(sa_exc.TimeoutError):
                async with engine.connect():
                    pass
    finally:
        await engine.dispose()
    text_ = generate_latest(registry).decode()
    labels = {"service_name": "items"}
    assert value(text_, "regatta_db_statement_duration_seconds_count", operation="select") == 1
    assert value(text_, "regatta_db_pool_wait_seconds_count", **labels) == 2
    assert value(text_, "regatta_db_pool_timeouts_total", **labels) == 1


async def test_cache_failures_and_redis_round_trips_are_counted(tmp_path: Path) -> None:
    metrics = PlatformMetrics(service_name="regatta", services=["items"])
    unreachable = PipelinedRedis(Endpoint("127.0.0.1", free_port()), connect_timeout=0.2)
    cache = RedisCache(unreachable, ttl_seconds=60, observer=metrics)
    try:
        assert await cache.get("items:1") is None  # a miss, not an error, for the client
    finally:
        await unreachable.aclose()
    text_ = generate_latest(metrics.registry).decode()
    items = {"service_name": "items"}
    assert value(text_, "regatta_cache_errors_total", operation="read", **items) == 1
    assert value(text_, "regatta_cache_errors_total", operation="write", **items) == 0
    count = "regatta_redis_command_duration_seconds_count"
    assert value(text_, count, operation="cache_get", **items) == 1


async def test_a_read_while_redis_is_unreachable_counts_as_a_cache_miss(tmp_path: Path) -> None:
    # The read cache in front of the routes counts each look-up; one Redis cannot answer is a
    # miss for the client (the route reads the database) and a read error for the operator.
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    app = create_embedded_app(sqlite_settings(tmp_path, redis_url=unreachable))
    async with serving(app) as client:
        assert (await client.get("/items/1")).status_code == 404
        text = (await client.get("/metrics")).text
    items = {"service_name": "items"}
    assert value(text, "regatta_cache_requests_total", result="miss", **items) == 1
    assert value(text, "regatta_cache_errors_total", operation="read", **items) == 1


@pytest.mark.postgres
async def test_single_statements_their_waits_and_connections_are_measured(
    postgres_url: str,
) -> None:
    # Reads and creates run by asyncpg itself on its pool (executor.py): their waits and
    # statements are what a slow database shows first.
    settings = ServiceSettings(
        environment=Environment.TEST,
        database_url=SecretStr(postgres_url),
        db_pool_size=2,
        db_pool_timeout_seconds=0.1,
    )
    database = create_database(settings)
    metrics = PlatformMetrics(service_name="items")
    metrics.sample_pool(database)
    items = {"service_name": "items"}
    statement: Select[Any] = select(literal_column("1").label("one"))
    try:
        assert await database.read(statement, {}) == [{"one": 1}]
        async with database.connect():
            metrics.sample_pool(database)
            in_use = generate_latest(metrics.registry).decode()
            with pytest.raises(sa_exc.TimeoutError):
                async with database.connect():
                    pass
        metrics.sample_pool(database)
    finally:
        await database.close()
    text_ = generate_latest(metrics.registry).decode()
    # One connection for statements, one for sessions (db.split_pool); the held one in use.
    assert value(in_use, "regatta_db_pool_size", **items) == 2
    assert value(in_use, "regatta_db_pool_checked_out", **items) == 1
    assert value(text_, "regatta_db_pool_checked_out", **items) == 0
    assert value(text_, "regatta_db_statement_duration_seconds_count", operation="select") >= 1
    assert value(text_, "regatta_db_pool_timeouts_total", **items) == 1
    assert value(text_, "regatta_db_pool_wait_seconds_count", **items) >= 3
