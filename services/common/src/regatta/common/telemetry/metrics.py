"""What an app exports to Prometheus, one process or several."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, cast

import prometheus_client
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import Pool, QueuePool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from regatta.common.telemetry.logs import log_request, request_logged

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from sqlalchemy.engine import ExceptionContext

    from regatta.common.data.db import Database
    from regatta.common.data.executor import Executor

# `foo_created` series double what Prometheus stores and no panel reads them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# 1 ms to 10 s: the fast path (a cached read) and a slow database both land in a real bucket.
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Lags (the outbox's; deliveries' end to end): from milliseconds to an hour of retries.
LAG_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip

UNOBSERVED_PATHS: Final = ("/metrics", "/livez", "/readyz", "/healthz")
MAX_REMEMBERED_SERIES: Final = 1024
API_KEY_ID_STATE: Final = "api_key_id"  # where the rate limiter leaves a request's key id

P = TypeVar("P")
_RequestSeries = tuple[str, Counter, Histogram]  # its service, request counter and durations
KeyPrincipal = Callable[[str], "str | None"]  # a presented API key's id, or None (http/auth.py)


def multiprocess_dir() -> str | None:
    """The directory shared by processes serving together, when metrics are multi-process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class PlatformMetrics:
    """What every app exports, in the app's own registry (a service adds its own: part())."""

    def __init__(
        self,
        *,
        service_name: str,
        services: Sequence[str] = (),
    ) -> None:
        self.service_name = service_name
        self.services = frozenset(services)
        self.registry = r = CollectorRegistry()
        self.key_principal: KeyPrincipal | None = None  # for log lines; instrument_http sets it

        def counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, documentation, ("service_name", *labels), registry=r)

        def gauge(name: str, documentation: str, *, mode: Literal["livesum", "livemax"]) -> Gauge:
            return Gauge(name, documentation, ("service_name",), multiprocess_mode=mode, registry=r)

        def histogram(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Histogram:
            labelnames = ("service_name", *labels)
            return Histogram(name, documentation, labelnames, buckets=LATENCY_BUCKETS, registry=r)

        self.http_requests = counter(
            "http_requests_total",
            "HTTP requests answered, by route template and status code.",
            ("handler", "method", "status"),
        )
        self.http_duration = histogram(
            "http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by route template.",
            ("handler", "method"),
        )
        self._request_series: dict[tuple[str, str, str], _RequestSeries] = {}
        self.rate_limited = counter(
            "regatta_rate_limited_requests_total", "Requests refused with 429 Too Many Requests."
        )
        # 0 where no limiter runs, or while Redis answers; the fail-open alert watches it.
        self.rate_limit_unavailable = counter(
            "regatta_rate_limit_unavailable_total",
            "Requests served without a rate-limit check because Redis could not be reached.",
        )
        self.rate_limit_unavailable.labels(service_name)
        self.cache_requests = counter(
            "regatta_cache_requests_total",
            "Response cache look-ups, by result (hit or miss).",
            ("result",),
        )
        self.pool_size = gauge(
            "regatta_db_pool_size",
            "Connections the database pool keeps open (beyond them it may overflow).",
            mode="livesum",
        )
        self.pool_checked_out = gauge(
            "regatta_db_pool_checked_out", "Database connections currently in use.", mode="livesum"
        )
        self.pool_wait = histogram(
            "regatta_db_pool_wait_seconds",
            "Time to get a connection from the database pool (waiting for a free one, or "
            "opening a new one).",
        )
        self.pool_timeouts = counter(
            "regatta_db_pool_timeouts_total",
            "Requests for a pooled connection that gave up after the pool timeout (a 503).",
        )
        self.pool_timeouts.labels(service_name)
        self.db_statement = histogram(
            "regatta_db_statement_duration_seconds",
            "Duration of one SQL statement, by operation (select, insert, update, delete, other).",
            ("operation",),
        )
        self.redis_command = histogram(
            "regatta_redis_command_duration_seconds",
            "Duration of one Redis round trip, by operation (cache_get, cache_store, rate_limit).",
            ("operation",),
        )
        self.cache_errors = counter(
            "regatta_cache_errors_total",
            "Response cache operations that failed (Redis unreachable or refusing), by "
            "operation (read: served from the database; write: retried later).",
            ("operation",),
        )
        self._instrumented: weakref.WeakSet[Any] = weakref.WeakSet()  # engines instrumented
        self.idempotency = counter(
            "regatta_idempotency_requests_total",
            "Creating requests with an Idempotency-Key, by outcome "
            "(stored, replayed, conflict: still in flight, mismatch: key reused).",
            ("outcome",),
        )
        self.outbox_backlog = gauge(
            "regatta_outbox_backlog",
            "Platform events written but not yet relayed to the stream.",
            mode="livemax",
        )
        self.outbox_oldest_age = gauge(
            "regatta_outbox_oldest_age_seconds",
            "Age of the oldest event still waiting in the outbox (0 when empty).",
            mode="livemax",
        )
        self.outbox_relayed = counter(
            "regatta_outbox_relayed_total", "Platform events relayed from the outbox to the stream."
        )
        self.outbox_relay_lag = Histogram(
            "regatta_outbox_relay_lag_seconds",
            "Time from an event's commit to its publication on the stream.",
            ("service_name",),
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.outbox_relay_errors = counter(
            "regatta_outbox_relay_errors_total",
            "Relay rounds that failed (the events wait in the outbox and are retried).",
        )
        self.up = gauge(
            "regatta_up",
            "1 while this process serves: the dead-man alerts watch it disappear.",
            mode="livemax",
        )
        self.up.labels(service_name).set(1)
        self._parts: dict[Callable[[CollectorRegistry], Any], Any] = {}  # part()'s, made once
        # Zero is an answer ("nothing was refused"), so these exist before the first event.
        for name in services:
            self.rate_limited.labels(name)
            for operation in ("read", "write"):
                self.cache_errors.labels(name, operation)
            for outcome in ("stored", "replayed", "conflict", "mismatch"):
                self.idempotency.labels(name, outcome)
        if multiprocess_dir() is None:  # CPU and memory; multiprocess mode adds up only files
            r.register(_WithLabels(prometheus_client.ProcessCollector(registry=None), service_name))

    def part(self, declare: Callable[[CollectorRegistry], P]) -> P:
        """The metrics ``declare`` registers in this app's registry, declared at the first call."""
        made = self._parts.get(declare)
        if made is None:
            made = self._parts[declare] = declare(self.registry)
        return cast("P", made)

    def start_at_zero(self, route: APIRoute) -> None:
        """Make a route's series for its success status and 500 at 0: a first 5xx reaches rate()."""
        statuses = dict.fromkeys((str(route.status_code or 200), "500"))
        for method in sorted(route.methods or ()):
            for status in statuses:
                self._series_of(route.path, method, status)

    def observe_request(
        self, scope: Scope, handler: str, start: Message | None, seconds: float
    ) -> None:
        """Count, time and log one request; ``start`` None: it failed before a response (500)."""
        method = scope["method"]
        code = start["status"] if start is not None else 500
        status = str(code)
        series = self._request_series.get((handler, method, status))
        if series is None:
            series = self._series_of(handler, method, status)
        service, requests, duration = series
        requests.inc()
        duration.observe(seconds, exemplar=trace_exemplar())
        if status == "429":  # Too Many Requests
            self.rate_limited.labels(service).inc()
        if request_logged(code):  # building the URL costs more than the metrics above
            request = Request(scope)
            headers = start.get("headers", ()) if start is not None else ()
            length = next((value for name, value in headers if name == b"content-length"), b"")
            log_request(
                service=service,
                route=handler,
                method=method,
                path=request.url.path,
                status=code,
                duration_seconds=seconds,
                client=request.client.host if request.client else None,
                api_key_id=api_key_id(request, self.key_principal),
                response_bytes=int(length) if length.isdigit() else None,
            )

    def _series_of(self, handler: str, method: str, status: str) -> _RequestSeries:
        # Remembered (up to a bound), so a request skips labels(): it validates under a lock.
        first = handler.split("/", 2)[1] if handler.startswith("/") else ""
        service = first if first in self.services else self.service_name
        series = (
            service,
            self.http_requests.labels(service, handler, method, status),
            self.http_duration.labels(service, handler, method),
        )
        if len(self._request_series) < MAX_REMEMBERED_SERIES:
            self._request_series[(handler, method, status)] = series
        return series

    def count_cache(self, key: str, hit: bool) -> None:
        """Count a cache look-up; keys start with the service's name (``items:42``)."""
        self.cache_requests.labels(key.split(":", 1)[0], "hit" if hit else "miss").inc()

    def count_idempotency(self, service: str, outcome: str) -> None:
        """Count a keyed creating request's outcome."""
        self.idempotency.labels(service, outcome).inc()

    def count_cache_error(self, key: str, operation: str) -> None:
        """Count a failed cache operation (``read`` or ``write``) on ``key``."""
        self.cache_errors.labels(key.split(":", 1)[0], operation).inc()

    def observe_redis(self, key: str, operation: str, seconds: float) -> None:
        """Time one Redis round trip of a cache operation on ``key``."""
        self.redis_command.labels(key.split(":", 1)[0], operation).observe(seconds)

    def instrument_database(self, database: Database) -> None:
        """Time the pool waits and statements (failed ones too) of ``database``, once per engine."""
        sync_engine = database.engine.sync_engine
        if sync_engine in self._instrumented:
            return
        self._instrumented.add(sync_engine)
        by_operation = {
            operation: self.db_statement.labels(self.service_name, operation)
            for operation in ("select", "insert", "update", "delete", "other")
        }

        def observe(statement: str, seconds: float) -> None:
            # Labelled by the statement's first keyword when a common one.
            head = statement.lstrip()[:8].split(None, 1)
            keyword = head[0].lower() if head else "other"
            by_operation[keyword if keyword in by_operation else "other"].observe(seconds)

        def before(*args: Any) -> None:
            context = args[4]
            if context is not None:
                context.regatta_started = time.perf_counter()

        def after(*args: Any) -> None:
            started = getattr(args[4], "regatta_started", None)
            if started is not None:
                observe(args[2], time.perf_counter() - started)

        def failed(context: ExceptionContext) -> None:
            started = getattr(context.execution_context, "regatta_started", None)
            if started is not None and context.statement:
                observe(context.statement, time.perf_counter() - started)

        event.listen(sync_engine, "before_cursor_execute", before)
        event.listen(sync_engine, "after_cursor_execute", after)
        event.listen(sync_engine, "handle_error", failed)
        database.statements.observe = observe
        self._time_waits(sync_engine.pool, database.statements)

    def _time_waits(self, pool: Pool, executor: Executor) -> None:
        # Waits for a connection, of the engine's pool or the executor's: timed, timeouts counted.
        waited = self.pool_wait.labels(self.service_name)
        timeouts = self.pool_timeouts.labels(self.service_name)
        get = pool._do_get  # noqa: SLF001

        def timed_get() -> Any:
            started = time.perf_counter()
            try:
                return get()
            except sa_exc.TimeoutError:
                timeouts.inc()
                raise
            finally:
                waited.observe(time.perf_counter() - started)

        def observe_wait(seconds: float, timed_out: bool) -> None:
            waited.observe(seconds)
            if timed_out:
                timeouts.inc()

        # SQLAlchemy has no event before a checkout: this pool's method that waits is timed.
        pool._do_get = timed_get  # type: ignore[method-assign]  # noqa: SLF001
        executor.observe_wait = observe_wait

    def sample_pool(self, database: Database) -> None:
        """Record the size and use of the engine's and the executor's pools together (no I/O)."""
        self.instrument_database(database)
        pool = database.engine.pool
        if isinstance(pool, QueuePool):  # SQLite's in-memory StaticPool has no size
            statements = database.statements
            self.pool_size.labels(self.service_name).set(pool.size() + statements.size)
            in_use = pool.checkedout() + statements.in_use
            self.pool_checked_out.labels(self.service_name).set(in_use)


def api_key_id(request: Request, principal: KeyPrincipal | None) -> str | None:
    """The id (``key-<digest>``) of the valid API key a request carries, else None."""
    known = request.scope.get("state", {}).get(API_KEY_ID_STATE)
    if known is not None:
        return str(known)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or principal is None:
        return None
    return principal(token.strip())


class _WithLabels(Collector):
    """Adds a ``service_name`` label to every sample of another collector."""

    def __init__(self, inner: Collector, service_name: str) -> None:
        self.inner = inner
        self.service_name = service_name

    def collect(self) -> Iterable[Metric]:
        for family in self.inner.collect():  # made afresh at each collect()
            family.samples = [
                sample._replace(labels={**sample.labels, "service_name": self.service_name})
                for sample in family.samples
            ]
            yield family


def trace_exemplar() -> dict[str, str] | None:
    """The current sampled trace as an exemplar, linking a latency bucket to a trace."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return {"trace_id": trace.format_trace_id(context.trace_id)}


class RequestMetricsMiddleware:
    """Count, time and log every request (pure ASGI) under ``scope["route"]``'s template."""

    def __init__(self, app: ASGIApp, metrics: PlatformMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        start: Message | None = None

        async def send_noting_start(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        finally:
            handler = getattr(scope.get("route"), "path", None) or "none"
            if handler not in UNOBSERVED_PATHS:
                self.metrics.observe_request(scope, handler, start, time.perf_counter() - started)


def instrument_http(
    app: FastAPI,
    metrics: PlatformMetrics,
    *,
    key_principal: KeyPrincipal | None,
    database: Callable[[], Database | None],
) -> None:
    """Measure and log every request, and serve ``/metrics`` (sampling ``database()``'s pools)."""
    metrics.key_principal = key_principal
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path not in UNOBSERVED_PATHS:
            metrics.start_at_zero(route)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    async def serve_metrics(request: Request) -> Response:
        opened = database()
        if opened is not None:
            metrics.sample_pool(opened)
        registry = metrics.registry
        if multiprocess_dir() is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(registry), headers={"Content-Type": content_type})


@contextlib.asynccontextmanager
async def leave_on_exit(tracer_provider: TracerProvider | None) -> AsyncIterator[None]:
    """As the app stops (uvicorn skips ``atexit``): send the queued spans, leave live gauges."""
    try:
        yield
    finally:
        if isinstance(tracer_provider, SdkTracerProvider):
            await asyncio.to_thread(tracer_provider.force_flush, 5000)  # milliseconds
        if multiprocess_dir() is not None:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
