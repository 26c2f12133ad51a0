"""The delivery worker: ``python -m regatta.notifications.worker``.

It claims due notifications (a lease, so a worker that dies mid-delivery loses nothing: its
claim expires and another worker delivers) and attempts each in a task of its own, claiming
more as soon as there is room: a slow receiver holds up only its own notifications. Every
attempt ends within its deadline, which the settings keep at most half the lease, so a live
worker's claim never expires under it. It also consumes platform events from the stream with
a consumer group, taking over the pending entries of dead consumers with XAUTOCLAIM. It serves
``/livez``, ``/readyz`` and ``/metrics`` on ``WORKER_PORT``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from regatta.common.data.columns import utcnow
from regatta.common.http.app import create_app
from regatta.common.http.serve import serve
from regatta.common.redis.events import Event, InProcessEventStream, RedisEventStream
from regatta.common.runtime import Runtime
from regatta.common.telemetry.tracing import continue_trace
from regatta.notifications import repository
from regatta.notifications.delivery import Deliverer
from regatta.notifications.metrics import WorkerMetrics
from regatta.notifications.models import Notification
from regatta.notifications.service import (
    WAKEUP,
    attempt_delivery,
    claim_due,
    fan_out,
    notifications_settings,
)
from regatta.notifications.settings import NotificationsSettings

logger = logging.getLogger("regatta.notifications.worker")

CONSUMER_GROUP = "notifications"
STALE_AFTER_MS = 60_000
EVENTS_BATCH = 100
BLOCK_MS = 1000
ERROR_PAUSE_SECONDS = 2.0
SAMPLE_SECONDS = 5.0  # how often the backlog and the stream lag are measured
WORKER_SERVICE_NAME = "notifications-worker"


def consumer_name() -> str:
    """A name unique to this process, stable for its lifetime (host and pid)."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ConsumerGroup:
    """A consumer group on the platform's event stream (``RedisEventStream.key``)."""

    redis: Redis
    key: str
    name: str = CONSUMER_GROUP

    async def ensure(self) -> None:
        """Create the group (and the stream) if missing, starting from the beginning."""
        try:
            await self.redis.xgroup_create(self.key, self.name, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, *, count: int, block_ms: int) -> list[tuple[bytes, Event]]:
        """New entries for ``consumer`` (blocking up to ``block_ms``)."""
        reply: list[Any] = await self.redis.xreadgroup(  # type: ignore[assignment]
            self.name, consumer, {self.key: ">"}, count=count, block=block_ms
        )
        return [
            (entry_id, Event.from_fields(fields))
            for _, entries in reply or []
            for entry_id, fields in entries
        ]

    async def claim_stale(
        self, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[tuple[bytes, Event]]:
        """Take over entries a dead consumer read but never acknowledged (XAUTOCLAIM)."""
        reply: list[Any] = await self.redis.xautoclaim(
            self.key, self.name, consumer, min_idle_time=min_idle_ms, start_id="0", count=count
        )
        entries = reply[1] if len(reply) > 1 else []
        return [(entry_id, Event.from_fields(fields)) for entry_id, fields in entries if fields]

    async def ack(self, entry_ids: Sequence[bytes]) -> None:
        """Acknowledge handled entries."""
        if entry_ids:
            await self.redis.xack(self.key, self.name, *entry_ids)

    async def lag(self) -> tuple[int | None, int]:
        """Entries the group has not read yet (None if Redis cannot tell) and read but unacked."""
        groups: list[dict[str, Any]] = await self.redis.xinfo_groups(self.key)
        for info in groups:
            name = info.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.name:
                lag = info.get("lag")
                return (int(lag) if lag is not None else None), int(info.get("pending") or 0)
        return None, 0


async def _sample_backlog(runtime: Runtime, metrics: WorkerMetrics) -> None:
    async with runtime.database.sessions() as session:
        due, oldest = await repository.due_backlog(session)
    metrics.backlog.set(due)
    waited = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
    metrics.oldest_due.set(max(waited, 0.0))


async def _sample_stream(group: ConsumerGroup, metrics: WorkerMetrics) -> None:
    lag, pending = await group.lag()
    if lag is not None:
        metrics.stream_lag.labels(CONSUMER_GROUP).set(lag)
    metrics.stream_pending.labels(CONSUMER_GROUP).set(pending)


async def _claim(
    runtime: Runtime, worker: str, settings: NotificationsSettings, room: int
) -> Sequence[Notification]:
    if room <= 0:
        return []
    return await claim_due(database=runtime.database, worker=worker, settings=settings, limit=room)


async def deliver_forever(runtime: Runtime) -> None:
    """Deliver due notifications until shutdown, then hand back anything still claimed."""
    metrics = runtime.metrics.part(WorkerMetrics)
    settings = notifications_settings(runtime.settings)
    deliverer = Deliverer(settings, tracer_provider=runtime.tracer_provider)
    tracer = runtime.tracer("regatta.notifications")
    worker = consumer_name()
    in_flight: set[asyncio.Task[None]] = set()

    async def attempt(notification: Notification) -> None:
        try:
            await attempt_delivery(
                runtime.database,
                deliverer,
                worker,
                settings,
                notification,
                metrics,
                tracer,
            )
        except Exception:
            # Its outcome could not be stored: the lease runs out and it is attempted again.
            logger.exception("recording the outcome of %s failed", notification.id)

    next_sample = time.monotonic()
    try:
        while not runtime.stopping.is_set():
            claimed: Sequence[Notification] = []
            try:
                if time.monotonic() >= next_sample:
                    await _sample_backlog(runtime, metrics)
                    next_sample = time.monotonic() + SAMPLE_SECONDS
                # At most DELIVERY_BATCH_SIZE attempts in flight; claim as many as there is room.
                room = settings.delivery_batch_size - len(in_flight)
                claimed = await _claim(runtime, worker, settings, room)
            except Exception:
                logger.exception("claiming deliveries failed; retrying")
                if await runtime.pause(ERROR_PAUSE_SECONDS):
                    break
            for notification in claimed:
                task = asyncio.create_task(attempt(notification))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if not claimed and await runtime.pause(settings.worker_poll_seconds, wake_on=WAKEUP):
                break
    finally:
        await _finish(runtime, deliverer, worker, in_flight)


async def _finish(
    runtime: Runtime, deliverer: Deliverer, worker: str, in_flight: set[asyncio.Task[None]]
) -> None:
    # Attempts in flight end within their deadline: let them record what they achieved.
    await asyncio.gather(*in_flight, return_exceptions=True)
    await deliverer.close()
    async with runtime.database.sessions() as session, session.begin():
        released = await repository.release_claims(session, worker=worker)
    if released:
        logger.info("released %d claimed notifications for another worker", released)


async def consume_events(runtime: Runtime) -> None:
    """Turn platform events into webhook notifications, one per matching subscription."""
    metrics = runtime.metrics.part(WorkerMetrics)
    stream = runtime.events
    tracer = runtime.tracer("regatta.notifications")

    async def handle(event: Event) -> None:
        with continue_trace(
            tracer,
            f"receive {event.type}",
            event.trace_context,
            kind=SpanKind.CONSUMER,
            attributes={"messaging.message.id": event.id},
        ):
            if await fan_out(runtime.database, event):
                runtime.wake(WAKEUP)
        metrics.events_consumed.labels(CONSUMER_GROUP, event.type).inc()
        metrics.event_lag.labels(CONSUMER_GROUP).observe(event.age_seconds())

    if isinstance(stream, InProcessEventStream):
        # Handed over in-process as it is published: nothing ever waits in a stream.
        metrics.stream_lag.labels(CONSUMER_GROUP).set(0)
        metrics.stream_pending.labels(CONSUMER_GROUP).set(0)
        stream.subscribe(handle)
        await runtime.stopping.wait()
        return
    assert isinstance(stream, RedisEventStream)  # noqa: S101 -- the only other kind
    group = ConsumerGroup(stream.redis, stream.key)
    me = consumer_name()
    group_ready = False
    next_sample = time.monotonic()
    while not runtime.stopping.is_set():
        try:
            if not group_ready:
                await group.ensure()
                group_ready = True
            if time.monotonic() >= next_sample:
                await _sample_stream(group, metrics)
                next_sample = time.monotonic() + SAMPLE_SECONDS
            entries = await group.claim_stale(
                me, min_idle_ms=STALE_AFTER_MS, count=EVENTS_BATCH
            ) or await group.read(me, count=EVENTS_BATCH, block_ms=BLOCK_MS)
            for _, event in entries:
                await handle(event)
            await group.ack([entry_id for entry_id, _ in entries])
        except ResponseError as exc:
            group_ready = "NOGROUP" not in str(exc)  # Redis restarted empty: make it again
            logger.warning("event stream error: %r", exc)
            await runtime.pause(ERROR_PAUSE_SECONDS)
        except Exception as exc:  # noqa: BLE001 -- Redis down: wait, the outbox keeps the events
            logger.warning("event stream unavailable, retrying: %r", exc)
            group_ready = False
            await runtime.pause(ERROR_PAUSE_SECONDS)


WORKERS = (("delivery", deliver_forever), ("events", consume_events))


def create_worker_app(settings: NotificationsSettings | None = None) -> FastAPI:
    """The worker process: health and metrics routes, delivery and event consumption."""
    settings = settings or NotificationsSettings()
    worker_settings = settings.model_copy(update={"port": settings.worker_port})
    return create_app(
        worker_settings,
        [],
        title="Regatta notifications worker",
        workers=WORKERS,
        service_name=WORKER_SERVICE_NAME,
    )


if __name__ == "__main__":
    serve(create_worker_app)
