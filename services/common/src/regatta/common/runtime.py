"""What a process holds open while it serves: database, Redis, cache, event stream, tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from opentelemetry.trace import Tracer, TracerProvider
from redis.asyncio import Redis

from regatta.common.data.db import Database, create_database
from regatta.common.redis.cache import MemoryCache, NullCache, RedisCache, ResponseCache
from regatta.common.redis.events import EventStream, InProcessEventStream, RedisEventStream
from regatta.common.redis.pipelined import Endpoint, PipelinedRedis
from regatta.common.settings import ServiceSettings
from regatta.common.telemetry import tracing
from regatta.common.telemetry.metrics import PlatformMetrics

logger = logging.getLogger("regatta.runtime")

RESTART_DELAY_SECONDS = 1.0
STOP_GRACE_SECONDS = 10.0


def create_pipelined(settings: ServiceSettings, tracer: Tracer) -> PipelinedRedis | None:
    """The pipelined connection for per-request commands (cache reads, rate limits)."""
    if settings.redis_url is None:
        return None
    endpoint = Endpoint.from_url(settings.redis_url.get_secret_value())
    return PipelinedRedis(endpoint, timeout=2.0, connect_timeout=0.5, tracer=tracer)


@dataclass
class Runtime:
    """Pools and clients of one process, opened together and closed together."""

    settings: ServiceSettings
    database: Database
    redis: Redis | None
    cache: ResponseCache
    events: EventStream
    metrics: PlatformMetrics
    tracer_provider: TracerProvider | None = None  # None: tracing is off
    pipelined: PipelinedRedis | None = None  # for per-request commands, with Redis
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # In-process nudges, so a worker in the same process need not wait for its next poll.
    wakeups: defaultdict[str, asyncio.Event] = field(
        default_factory=lambda: defaultdict(asyncio.Event)
    )

    def tracer(self, name: str) -> Tracer:
        """A tracer for background work (a no-op one, passing context on, while tracing is off)."""
        return tracing.tracer(self.tracer_provider, name)

    def wake(self, name: str) -> None:
        """Nudge whoever waits in :meth:`pause` on ``name``."""
        self.wakeups[name].set()

    def start(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` until shutdown, restarted if it crashes; it should wait in :meth:`pause`."""
        self.tasks.append(asyncio.create_task(self._supervise(name, work), name=name))

    async def pause(self, seconds: float, *, wake_on: str | None = None) -> bool:
        """Sleep up to ``seconds`` (less when woken); True, at once, when shutdown has begun."""
        if self.stopping.is_set():
            return True
        waits = [asyncio.ensure_future(self.stopping.wait())]
        if wake_on is not None:
            waits.append(asyncio.ensure_future(self.wakeups[wake_on].wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        if wake_on is not None:
            self.wakeups[wake_on].clear()
        return self.stopping.is_set()

    async def stop_tasks(self) -> None:
        """Ask background tasks to stop, give them ``STOP_GRACE_SECONDS``, then cancel the rest."""
        self.stopping.set()
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=STOP_GRACE_SECONDS)
            for task in pending:
                logger.warning("background task %s did not stop in time; cancelling", task)
                task.cancel()
            for task in self.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.tasks.clear()

    async def _supervise(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        while not self.stopping.is_set():
            try:
                await work()
            except Exception:
                logger.exception("background task %s crashed; restarting", name)
            await self.pause(RESTART_DELAY_SECONDS)


@contextlib.asynccontextmanager
async def open_runtime(
    settings: ServiceSettings,
    *,
    metrics: PlatformMetrics,
    tracer_provider: TracerProvider | None = None,
    statements: bool = True,
    sessions: bool = True,
) -> AsyncIterator[Runtime]:
    """Open the pools the settings call for, split by where requests run; stop tasks, then close."""
    database = create_database(settings, statements=statements, sessions=sessions)
    redis: Redis | None = None
    pipelined = create_pipelined(
        settings, tracing.tracer(tracer_provider, "opentelemetry.instrumentation.redis")
    )
    cache: ResponseCache = NullCache()
    events: EventStream = InProcessEventStream()
    if settings.redis_url is None or pipelined is None:
        if settings.cache_enabled:
            cache = MemoryCache(
                ttl_seconds=settings.cache_ttl_seconds, max_entries=settings.cache_max_entries
            )
    else:
        redis = Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=2.0,  # short: a slow Redis degrades to the database, not a hang
            socket_connect_timeout=0.5,
            health_check_interval=10,
            retry_on_timeout=False,
        )
        events = RedisEventStream(redis, settings.redis_key_prefix + "events", pipelined)
        if settings.cache_enabled:
            shared = RedisCache(
                pipelined,
                ttl_seconds=settings.cache_ttl_seconds,
                prefix=settings.redis_key_prefix + "cache:",
                observer=metrics,
            )
            # Each new pipelined connection (the one reading the cache) advances its generation.
            pipelined.on_connect = partial(shared.advance_generation, redis)
            cache = shared
    if tracer_provider is not None:
        tracing.trace_database(database, tracer_provider)
        if redis is not None:
            tracing.instrument_redis(redis, tracer_provider)
    runtime = Runtime(
        settings=settings,
        database=database,
        redis=redis,
        cache=cache,
        events=events,
        metrics=metrics,
        tracer_provider=tracer_provider,
        pipelined=pipelined,
    )
    try:
        yield runtime
    finally:
        await runtime.stop_tasks()
        if pipelined is not None:
            await pipelined.aclose()
        if redis is not None:
            await redis.aclose()
        await database.close()
