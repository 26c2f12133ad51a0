"""What a process holds open while it serves: database, Redis, cache, event stream, tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from opentelemetry.trace import Tracer, TracerProvider
from redis.asyncio import Redis

from regatta.common.data.db import Database, create_database
from regatta.common.redis.cache import (
    CacheGeneration,
    MemoryCache,
    NullCache,
    RedisCache,
    ResponseCache,
)
from regatta.common.redis.events import EventStream, InProcessEventStream, RedisEventStream
from regatta.common.redis.pipelined import Endpoint, PipelinedRedis
from regatta.common.settings import ServiceSettings
from regatta.common.telemetry import tracing
from regatta.common.telemetry.metrics import PlatformMetrics

logger = logging.getLogger("regatta.runtime")

CACHE_KEYS = "cache:"
RESTART_DELAY_SECONDS = 1.0
STOP_GRACE_SECONDS = 10.0


def create_redis(settings: ServiceSettings, generation: CacheGeneration | None) -> Redis | None:
    """A Redis client with short timeouts (a slow Redis degrades to the database, not a hang).

    With ``generation``, every connection it opens advances the cache generation first.
    """
    if settings.redis_url is None:
        return None
    return Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=2.0,
        socket_connect_timeout=0.5,
        health_check_interval=10,
        retry_on_timeout=False,
        redis_connect_func=generation.on_connect if generation is not None else None,
    )


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
    # None while tracing is off: then nothing is instrumented.
    tracer_provider: TracerProvider | None = None
    # One pipelined Redis connection for per-request commands (pipelined.py), with Redis.
    pipelined: PipelinedRedis | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # In-process nudges ("there is work for you"), so a worker in the same process need not
    # wait for its next poll.
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)

    def tracer(self, name: str) -> Tracer:
        """A tracer for background work (a no-op one, passing context on, while tracing is off)."""
        return tracing.tracer(self.tracer_provider, name)

    def wake(self, name: str) -> None:
        """Nudge whoever waits in :meth:`pause` on ``name``."""
        self.wakeups.setdefault(name, asyncio.Event()).set()

    def start(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` in the background until shutdown, restarting it if it crashes.

        ``work`` should loop until :attr:`stopping` is set, waiting with :meth:`pause`, so that
        shutdown lets it finish what it holds instead of cancelling it mid-query.
        """
        self.tasks.append(asyncio.create_task(self._supervise(name, work), name=name))

    async def pause(self, seconds: float, *, wake_on: str | None = None) -> bool:
        """Sleep up to ``seconds`` (less when woken); True, at once, when shutdown has begun."""
        if self.stopping.is_set():
            return True
        waits = [asyncio.ensure_future(self.stopping.wait())]
        if wake_on is not None:
            waits.append(
                asyncio.ensure_future(self.wakeups.setdefault(wake_on, asyncio.Event()).wait())
            )
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        if wake_on is not None:
            self.wakeups[wake_on].clear()
        return self.stopping.is_set()

    async def stop_tasks(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Ask background tasks to stop, give them ``grace_seconds``, then cancel the rest."""
        self.stopping.set()
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=grace_seconds)
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
    """Open the pools the settings call for; close them (tasks first) on the way out.

    ``statements`` and ``sessions`` say where requests run, to split the database's pool.
    """
    database = create_database(settings, statements=statements, sessions=sessions)
    generation: CacheGeneration | None = None  # the shared response cache's, in Redis
    if settings.redis_url is not None and settings.cache_enabled:
        generation = CacheGeneration(settings.redis_key_prefix + CACHE_KEYS + "generation")
    redis = create_redis(settings, generation)
    reader = create_pipelined(
        settings, tracing.tracer(tracer_provider, "opentelemetry.instrumentation.redis")
    )
    if reader is not None and redis is not None and generation is not None:
        reader.on_connect = partial(generation.advance, redis)
    if tracer_provider is not None:
        tracing.trace_database(database, tracer_provider)
        if redis is not None:
            tracing.instrument_redis(redis, tracer_provider)
    cache: ResponseCache
    if not settings.cache_enabled:
        cache = NullCache()
    elif reader is not None:
        cache = RedisCache(
            reader,
            ttl_seconds=settings.cache_ttl_seconds,
            prefix=settings.redis_key_prefix + CACHE_KEYS,
            generation=generation,
            observer=metrics,
        )
    else:
        cache = MemoryCache(
            ttl_seconds=settings.cache_ttl_seconds, max_entries=settings.cache_max_entries
        )
    events = (
        RedisEventStream(redis, settings.redis_key_prefix + "events", reader)
        if redis is not None and reader is not None
        else InProcessEventStream()
    )
    runtime = Runtime(
        settings=settings,
        database=database,
        redis=redis,
        cache=cache,
        events=events,
        metrics=metrics,
        tracer_provider=tracer_provider,
        pipelined=reader,
    )
    try:
        yield runtime
    finally:
        await runtime.stop_tasks()
        if reader is not None:
            await reader.aclose()
        if redis is not None:
            await redis.aclose()
        await database.close()
