"""What a handler is given: one typed :class:`RequestContext`, built by one dependency."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Request
from opentelemetry.trace import TracerProvider
from starlette.applications import Starlette

from regatta.common.data.db import Database
from regatta.common.data.idempotency import IdempotencyStore
from regatta.common.http.auth import ApiKeys, KeyAccess, authorize
from regatta.common.http.health import Lifecycle
from regatta.common.http.routing import check_query
from regatta.common.redis.cache import ResponseCache
from regatta.common.settings import ServiceSettings
from regatta.common.telemetry.metrics import PlatformMetrics

if TYPE_CHECKING:
    from regatta.common.http.app import ServiceSpec, Worker
    from regatta.common.runtime import Runtime


@dataclass(eq=False)
class Platform:
    """One application's services, typed: built with the app, completed by its lifespan."""

    settings: ServiceSettings
    service_name: str
    metrics: PlatformMetrics
    api_keys: ApiKeys
    lifecycle: Lifecycle
    tracer_provider: TracerProvider | None
    services: Sequence[ServiceSpec] = ()
    run_workers: bool = False
    workers: Sequence[tuple[str, Worker]] = ()
    runtime: Runtime | None = None  # opened by the lifespan: None before it starts, after it ends
    idempotency: dict[str, IdempotencyStore] = field(default_factory=dict)

    @property
    def serving(self) -> Runtime:
        """The open runtime (the lifespan has started)."""
        if self.runtime is None:
            raise RuntimeError("the application's lifespan has not started")
        return self.runtime


def platform_of(app: Starlette | Any) -> Platform:
    """The platform an application was built with."""
    platform: Platform = app.state.platform
    return platform


@dataclass(slots=True, eq=False)
class RequestContext:
    """Everything a handler of one service needs for one request."""

    request: Request
    runtime: Runtime  # pools, clients and background work of the process
    database: Database
    cache: ResponseCache
    idempotency: IdempotencyStore | None  # None for a service that keeps no records
    # A key's stable id, "anonymous" with keys off, or None when the route asked for no key.
    principal: str | None

    @property
    def store(self) -> IdempotencyStore:
        """The service's idempotency store."""
        if self.idempotency is None:
            raise RuntimeError("this service keeps no idempotency records")
        return self.idempotency

    @property
    def writer(self) -> str:
        """The principal of a route that required a key."""
        if self.principal is None:
            raise RuntimeError("this route's context asked for no key")
        return self.principal


@dataclass(frozen=True, slots=True, eq=False)
class ContextFactory:
    """The one dependency (six would cost more) giving a route of ``service`` its context."""

    service: str
    access: Literal["public"] | KeyAccess = "public"  # "writer" and "reader" need a key

    async def __call__(self, request: Request) -> RequestContext:
        """Check the query (422) and the key, then build the context (async: not in a thread)."""
        check_query(request)
        platform = platform_of(request.app)
        runtime = platform.serving
        principal = (
            None if self.access == "public" else authorize(request, platform.api_keys, self.access)
        )
        return RequestContext(
            request=request,
            runtime=runtime,
            database=runtime.database,
            cache=runtime.cache,
            idempotency=platform.idempotency.get(self.service),
            principal=principal,
        )
