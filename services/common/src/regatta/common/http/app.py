"""The application factory: one FastAPI app serving one service, or several (the embedded mode)."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from opentelemetry.trace import TracerProvider
from sqlalchemy import Table
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware

from regatta.common.data import migrations
from regatta.common.data.idempotency import IdempotencyStore
from regatta.common.http.auth import ApiKeys
from regatta.common.http.context import Platform, platform_of
from regatta.common.http.health import Lifecycle, health_router
from regatta.common.http.middleware import RequestBodyMiddleware, RequestIdMiddleware
from regatta.common.http.problems import UnhandledErrorMiddleware, install_problem_handlers
from regatta.common.http.ratelimit import install_rate_limit
from regatta.common.http.readcache import CachedReads
from regatta.common.http.resource_routes import ResourceRoutes, resource_router
from regatta.common.http.routing import add_routes
from regatta.common.redis.events import relay_outbox
from regatta.common.runtime import Runtime, open_runtime
from regatta.common.settings import ServiceSettings
from regatta.common.telemetry import tracing
from regatta.common.telemetry.metrics import PlatformMetrics, instrument_http, leave_on_exit

logger = logging.getLogger("regatta.app")

IDEMPOTENCY_PURGE_INTERVAL_SECONDS = 600
POOL_SAMPLE_SECONDS = 5.0

# The request headers a browser may send across origins, and the response headers it may read.
_CORS_ALLOW = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "If-Match",
    "If-None-Match",
    "X-Request-ID",
)
_CORS_EXPOSE = ("ETag", "Location", "X-Request-ID", "Retry-After", "RateLimit", "RateLimit-Policy")
Worker = Callable[[Runtime], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What a service contributes to an app: its routes, schema, tables and background work."""

    name: str
    migrations: migrations.MigrationSpec
    idempotency_table: Table
    resources: Sequence[ResourceRoutes] = ()  # each: five routes and their read cache
    router: APIRouter | None = None  # routes of its own, besides its resources'
    outbox_table: Table | None = None  # events of each change, relayed by every replica
    workers: Sequence[tuple[str, Worker]] = ()  # in-app with run_workers, else their own process


async def _purge_idempotency(runtime: Runtime, stores: Sequence[IdempotencyStore]) -> None:
    while not await runtime.pause(IDEMPOTENCY_PURGE_INTERVAL_SECONDS):
        for store in stores:
            async with runtime.database.sessions() as session:
                purged = await store.purge_expired(session)
            logger.info("purged %d expired idempotency records", purged)


async def _sample_pool(runtime: Runtime) -> None:
    # Scrapes also sample; this keeps other processes' values fresh in multiprocess mode.
    while True:
        runtime.metrics.sample_pool(runtime.database)
        if await runtime.pause(POOL_SAMPLE_SECONDS):
            return


def _start_background(platform: Platform, runtime: Runtime) -> None:
    stores = list(platform.idempotency.values())
    runtime.start("pool-sampler", partial(_sample_pool, runtime))
    if stores:
        runtime.start("idempotency-purge", partial(_purge_idempotency, runtime, stores))
    for service in platform.services:
        if service.outbox_table is not None:
            runtime.start(
                f"{service.name}-outbox-relay",
                partial(
                    relay_outbox,
                    database=runtime.database,
                    outbox=service.outbox_table,
                    source=service.name,
                    stream=runtime.events,
                    pause=runtime.pause,
                    metrics=runtime.metrics,
                    tracer=runtime.tracer("regatta.events"),
                ),
            )
        if platform.run_workers:
            for name, worker in service.workers:
                runtime.start(f"{service.name}-{name}", partial(worker, runtime))
    for name, worker in platform.workers:
        runtime.start(name, partial(worker, runtime))


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    platform = platform_of(app)
    settings, services = platform.settings, platform.services
    if settings.migrate_on_start and services:
        await migrations.upgrade(settings, [service.migrations for service in services])
    lifecycle, metrics = platform.lifecycle, platform.metrics
    async with (
        leave_on_exit(platform.tracer_provider),
        open_runtime(
            settings,
            metrics=metrics,
            tracer_provider=platform.tracer_provider,
            statements=any(service.resources for service in services),
            sessions=any(service.router is not None for service in services),
        ) as runtime,
    ):
        lifecycle.checks["database"] = runtime.database.ping
        if runtime.redis is not None:
            lifecycle.checks["redis"] = runtime.redis.ping
        lifecycle.watch_signals()
        platform.idempotency = {
            service.name: IdempotencyStore(
                service.idempotency_table,
                ttl_seconds=settings.idempotency_ttl_seconds,
                observe=partial(metrics.count_idempotency, service.name),
            )
            for service in services
        }
        platform.runtime = runtime
        _start_background(platform, runtime)
        # Built to last the process: frozen, full collections skip it (shorter pauses, tighter p99).
        gc.freeze()
        logger.info(
            "serving %s on %s with %s cache%s",
            ", ".join(f"/{s.name}" for s in services) or "health only",
            runtime.database.dialect,
            "redis" if runtime.redis is not None else "in-process",
            " and in-process workers" if platform.run_workers or platform.workers else "",
        )
        try:
            yield
        finally:
            gc.unfreeze()  # what this app built may be collected once it stops
            platform.runtime = None
            # Runs before open_runtime closes: readiness is off before the pools go away.
            lifecycle.begin_shutdown()
            lifecycle.restore_signals()


def create_app(
    settings: ServiceSettings,
    services: Sequence[ServiceSpec],
    *,
    title: str,
    run_workers: bool = False,
    workers: Sequence[tuple[str, Worker]] = (),
    service_name: str | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """Build the app: middleware, problem handlers, health, metrics and each service's routes."""
    app = FastAPI(
        title=title,
        version="0.1.0",
        lifespan=_lifespan,
        # telemetry/ measures and traces; FastAPI's own would duplicate it, at 8 µs a request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    name = service_name or (services[0].name if len(services) == 1 else "regatta")
    platform = Platform(
        settings=settings,
        service_name=name,
        metrics=PlatformMetrics(service_name=name, services=[service.name for service in services]),
        api_keys=ApiKeys([k.get_secret_value() for k in settings.api_keys], settings.api_keys_file),
        lifecycle=Lifecycle(),
        tracer_provider=tracer_provider or tracing.tracer_provider_from_environment(name),
        services=list(services),
        run_workers=run_workers,
        workers=list(workers),
    )
    app.state.platform = platform  # the one thing app.state holds (context.platform_of)
    install_problem_handlers(app)
    docs = len(app.router.routes)  # FastAPI's own: the OpenAPI document and the docs pages
    for service in services:
        for declared in service.resources:
            add_routes(app, resource_router(declared))
        if service.router is not None:
            add_routes(app, service.router)
    served = app.router.routes[docs:]
    add_routes(app, health_router(platform.lifecycle))
    listing = {"name": title, "services": [f"/{s.name}" for s in services], "docs": "/docs"}

    @app.get("/", include_in_schema=False)
    async def index() -> JSONResponse:
        return JSONResponse(listing)

    # Added innermost first: the last one added sees the request first.
    cached = [r.resource for service in services for r in service.resources if r.read_cache]
    if cached and settings.cache_enabled:  # with the cache off, every look-up would miss
        app.add_middleware(
            CachedReads,
            resources=cached,
            routes=app.routes,
            cache=lambda: platform.runtime.cache if platform.runtime is not None else None,
            count=platform.metrics.count_cache,
        )
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(RequestBodyMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        GZipMiddleware,
        minimum_size=1024,
        compresslevel=6,  # zlib's default, not Starlette's 9: half the time, 1 % larger
        # Starlette's list of types left uncompressed (none served here) costs 3-5 µs a request.
        exclude_content_types=(),
    )
    # Inside CORS and metrics, so a 429 is counted and browser-readable; outside body and cache.
    install_rate_limit(app, settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=_CORS_ALLOW,
            expose_headers=_CORS_EXPOSE,
        )
    instrument_http(
        app,
        platform.metrics,
        key_principal=platform.api_keys.principal,
        database=lambda: platform.runtime.database if platform.runtime is not None else None,
    )
    app.add_middleware(RequestIdMiddleware)
    if platform.tracer_provider is not None:
        tracing.instrument_app(app, platform.tracer_provider)
    # Services' routes first: their requests aren't tried against docs, probes, metrics (1 µs each).
    app.router.routes.sort(key=lambda route: route not in served)
    return app
