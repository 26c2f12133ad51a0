"""The application factory: one FastAPI app serving one service, or several (the embedded mode)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from redis.asyncio import Redis
from sqlalchemy import Table
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware

from regatta.common import health, migrations
from regatta.common.auth import ApiKeys
from regatta.common.cache import MemoryCache, RedisCache, ResponseCache
from regatta.common.db import Database, create_engine
from regatta.common.errors import UnhandledErrorMiddleware, install_problem_handlers
from regatta.common.health import Lifecycle
from regatta.common.idempotency import IdempotencyStore
from regatta.common.middleware import (
    BodySizeLimitMiddleware,
    JsonContentTypeMiddleware,
    RequestIdMiddleware,
)
from regatta.common.settings import ServiceSettings

logger = logging.getLogger("regatta.app")

IDEMPOTENCY_PURGE_INTERVAL_SECONDS = 600
GZIP_MINIMUM_BYTES = 1024


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What a service contributes to an app: its routes, schema migrations and tables."""

    name: str
    router: APIRouter
    migrations: migrations.MigrationSpec
    idempotency_table: Table


def create_redis(settings: ServiceSettings) -> Redis | None:
    """A Redis client with short timeouts (a slow Redis degrades to the database, not a hang)."""
    if settings.redis_url is None:
        return None
    return Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        health_check_interval=10,
        retry_on_timeout=False,
    )


async def _purge_idempotency(app: FastAPI) -> None:
    database: Database = app.state.database
    while True:
        await asyncio.sleep(IDEMPOTENCY_PURGE_INTERVAL_SECONDS)
        for store in app.state.idempotency.values():
            try:
                async with database.sessions() as session:
                    purged = await store.purge_expired(session)
                logger.info("purged %d expired idempotency records", purged)
            except Exception:
                logger.exception("purging idempotency records failed; will retry")


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ServiceSettings = app.state.settings
    services: Sequence[ServiceSpec] = app.state.services
    if settings.migrate_on_start:
        await migrations.upgrade(settings, [service.migrations for service in services])
    database = Database(create_engine(settings))
    redis = create_redis(settings)
    cache: ResponseCache = (
        RedisCache(
            redis,
            ttl_seconds=settings.cache_ttl_seconds,
            prefix=settings.redis_key_prefix + "cache:",
        )
        if redis is not None
        else MemoryCache(
            ttl_seconds=settings.cache_ttl_seconds, max_entries=settings.cache_max_entries
        )
    )
    lifecycle: Lifecycle = app.state.lifecycle
    lifecycle.checks["database"] = database.ping
    if redis is not None:
        lifecycle.checks["redis"] = redis.ping
    lifecycle.watch_signals()
    app.state.database = database
    app.state.redis = redis
    app.state.cache = cache
    app.state.idempotency = {
        service.name: IdempotencyStore(
            service.idempotency_table, ttl_seconds=settings.idempotency_ttl_seconds
        )
        for service in services
    }
    purger = asyncio.create_task(_purge_idempotency(app), name="idempotency-purge")
    logger.info(
        "serving %s on %s with %s cache",
        ", ".join(f"/{s.name}" for s in services),
        database.dialect,
        "redis" if redis is not None else "in-process",
    )
    try:
        yield
    finally:
        lifecycle.begin_shutdown()
        lifecycle.restore_signals()
        purger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purger
        if redis is not None:
            await redis.aclose()
        await database.close()


def create_app(
    settings: ServiceSettings, services: Sequence[ServiceSpec], *, title: str
) -> FastAPI:
    """Build the app: middleware, problem handlers, health, metrics and each service's routes."""
    app = FastAPI(title=title, version="0.1.0", lifespan=_lifespan)
    app.state.settings = settings
    app.state.services = list(services)
    app.state.lifecycle = Lifecycle()
    app.state.api_keys = ApiKeys.from_settings(settings)
    install_problem_handlers(app)
    app.include_router(health.router)
    for service in services:
        app.include_router(service.router)

    @app.get("/", include_in_schema=False)
    async def index() -> JSONResponse:
        return JSONResponse(
            {"name": title, "services": [f"/{s.name}" for s in services], "docs": "/docs"}
        )

    # Added innermost first: the last one added sees the request first.
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(JsonContentTypeMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MINIMUM_BYTES)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "If-Match",
                "If-None-Match",
                "X-Request-ID",
            ],
            expose_headers=["ETag", "Location", "X-Request-ID", "Retry-After"],
        )
    Instrumentator(
        excluded_handlers=["/metrics", "/livez", "/readyz", "/healthz"],
        registry=CollectorRegistry(),
    ).instrument(app).expose(app, include_in_schema=False)
    app.add_middleware(RequestIdMiddleware)
    return app
