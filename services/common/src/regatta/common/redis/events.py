"""Events: an outbox row per change, relayed to a stream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Protocol

from opentelemetry.trace import Span, SpanKind, Tracer
from redis.asyncio import Redis
from sqlalchemy import Table

from regatta.common.data.columns import utcnow
from regatta.common.data.db import Database
from regatta.common.data.outbox import backlog, mark_published, take_unpublished
from regatta.common.redis.pipelined import PipelinedRedis
from regatta.common.telemetry.metrics import PlatformMetrics
from regatta.common.telemetry.tracing import carrier_of, parent_context

logger = logging.getLogger("regatta.events")

STREAM_MAX_LENGTH = 100_000
RELAY_BATCH = 100
RELAY_IDLE_SECONDS = 0.2
RELAY_MAX_BACKOFF_SECONDS = 10.0
BACKLOG_SAMPLE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Event:
    """One platform event: ``id`` is unique across services (``items:42``)."""

    id: str
    type: str
    payload: str  # the resource's JSON as rendered, parsed only by a consumer that needs it
    occurred_at: str
    trace_context: str | None = None

    def fields(self) -> list[bytes]:
        """The event as a Redis Stream entry: each field's name, then its value."""
        fields = asdict(self)
        if not self.trace_context:
            del fields["trace_context"]
        return [part.encode() for pair in fields.items() for part in pair]

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Event:
        """Parse a stream entry written by :meth:`fields`."""
        text = {key.decode(): value.decode() for key, value in fields.items()}
        return cls(
            id=text["id"],
            type=text["type"],
            payload=text["payload"],
            occurred_at=text["occurred_at"],
            trace_context=text.get("trace_context"),
        )

    def age_seconds(self) -> float:
        """How long ago the change behind the event was committed."""
        return max((utcnow() - datetime.fromisoformat(self.occurred_at)).total_seconds(), 0.0)


class EventStream(Protocol):
    """Where relays publish events."""

    async def publish(self, events: Sequence[Event]) -> None:
        """Deliver ``events`` to the stream; raise if they could not all be accepted."""


class NoConsumerError(RuntimeError):
    """An in-process stream has nobody to hand events to (yet)."""


class InProcessEventStream:
    """The embedded default: publishing hands each event straight to the in-process consumers."""

    def __init__(self) -> None:
        self._handlers: list[Callable[[Event], Awaitable[None]]] = []

    def subscribe(self, handler: Callable[[Event], Awaitable[None]]) -> None:
        """Receive every event published from now on."""
        self._handlers.append(handler)

    async def publish(self, events: Sequence[Event]) -> None:
        """Run every handler on every event; an error leaves the events unpublished."""
        if not self._handlers:
            raise NoConsumerError
        for event in events:
            for handler in self._handlers:
                await handler(event)


class RedisEventStream:
    """A Redis Stream shared by every service, written over ``pipelined``, read on ``redis``."""

    def __init__(self, redis: Redis, key: str, pipelined: PipelinedRedis) -> None:
        self.redis = redis
        self.key = key
        self._pipelined = pipelined
        self._xadd = (b"XADD", key.encode(), b"MAXLEN", b"~", b"%d" % STREAM_MAX_LENGTH, b"*")

    async def publish(self, events: Sequence[Event]) -> None:
        """XADD every event, trimming the stream approximately; raise if any was refused."""
        added = await asyncio.gather(
            *(self._pipelined.execute(*self._xadd, *event.fields()) for event in events),
            return_exceptions=True,
        )
        failed = next((result for result in added if isinstance(result, BaseException)), None)
        if failed is not None:
            raise failed


async def relay_outbox(
    *,
    database: Database,
    outbox: Table,
    source: str,
    stream: EventStream,
    pause: Callable[[float], Awaitable[bool]],
    metrics: PlatformMetrics,
    tracer: Tracer,
) -> None:
    """Until ``pause`` says stop: move unpublished rows to the stream, oldest first, then mark."""
    # Zero is an answer: the series exist from the start.
    metrics.outbox_relayed.labels(source)
    metrics.outbox_relay_errors.labels(source)
    relay = _Relay(database, outbox, source, stream, metrics, tracer)
    backoff = RELAY_IDLE_SECONDS
    next_sample = time.monotonic()
    while True:
        try:
            if time.monotonic() >= next_sample:
                await relay.sample_backlog()
                next_sample = time.monotonic() + BACKLOG_SAMPLE_SECONDS
            moved = await relay.relay_batch()
        except NoConsumerError:
            moved = 0
        except Exception as exc:  # noqa: BLE001 -- the relay must outlive any failure
            logger.warning("relaying %s events failed, will retry: %r", source, exc)
            metrics.outbox_relay_errors.labels(source).inc()
            backoff = min(backoff * 2, RELAY_MAX_BACKOFF_SECONDS)
            if await pause(backoff):
                return
            continue
        backoff = RELAY_IDLE_SECONDS
        if await pause(RELAY_IDLE_SECONDS if moved < RELAY_BATCH else 0):
            return


@dataclass(frozen=True, slots=True)
class _Relay:
    database: Database
    outbox: Table
    source: str
    stream: EventStream
    metrics: PlatformMetrics
    tracer: Tracer

    async def relay_batch(self) -> int:
        async with self.database.sessions() as session, session.begin():
            rows = await take_unpublished(session, self.outbox, RELAY_BATCH)
            if not rows:
                return 0
            spans: list[Span] = []
            events: list[Event] = []
            for row in rows:
                event_id = f"{self.source}:{row.id}"
                # A producer span in the trace of the change that wrote the event.
                span = self.tracer.start_span(
                    f"publish {row.event_type}",
                    context=parent_context(row.trace_context),
                    kind=SpanKind.PRODUCER,
                    attributes={"messaging.message.id": event_id},
                )
                spans.append(span)
                occurred_at = row.occurred_at.isoformat().replace("+00:00", "Z")
                events.append(
                    Event(event_id, row.event_type, row.payload, occurred_at, carrier_of(span))
                )
            try:
                await self.stream.publish(events)
            finally:
                for span in spans:
                    span.end()
            published_at = utcnow()
            await mark_published(session, self.outbox, [row.id for row in rows], published_at)
        self.metrics.outbox_relayed.labels(self.source).inc(len(rows))
        lag = self.metrics.outbox_relay_lag.labels(self.source)
        for row in rows:
            lag.observe(max((published_at - row.occurred_at).total_seconds(), 0.0))
        return len(rows)

    async def sample_backlog(self) -> None:
        async with self.database.sessions() as session:
            count, oldest = await backlog(session, self.outbox)
        self.metrics.outbox_backlog.labels(self.source).set(count)
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        self.metrics.outbox_oldest_age.labels(self.source).set(max(age, 0.0))
