"""Platform events: an outbox written with the change, relayed to a stream, consumed by groups.

A service that publishes events inserts an outbox row in the same transaction as the change it
describes, so an event exists exactly when its change does. A relay task in every replica of
that service moves unpublished rows to the stream (a Redis Stream shared by every service; in
the single-process embedded default, straight to the in-process consumer) and only then marks
them published. If Redis is down the rows wait; nothing is lost, and a row published twice
(a crash between the publish and the mark) is de-duplicated by its event id downstream.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import Column, Index, MetaData, String, Table, Text, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from regatta.common.columns import BigIntPK, UTCDateTime, utcnow
from regatta.common.db import Database

logger = logging.getLogger("regatta.events")

STREAM_MAX_LENGTH = 100_000
RELAY_BATCH = 100
RELAY_IDLE_SECONDS = 0.2
RELAY_MAX_BACKOFF_SECONDS = 10.0


def outbox_table(metadata: MetaData, name: str) -> Table:
    """The outbox a service writes its events to (one per service)."""
    table = Table(
        name,
        metadata,
        Column("id", BigIntPK, primary_key=True),
        Column("event_type", String(64), nullable=False),
        Column("payload", Text, nullable=False),
        Column("occurred_at", UTCDateTime, nullable=False),
        Column("published_at", UTCDateTime),
        sqlite_autoincrement=True,
    )
    # The relay only ever looks for unpublished rows: keep that index tiny.
    Index(
        f"ix_{name}_unpublished",
        table.c.id,
        postgresql_where=table.c.published_at.is_(None),
        sqlite_where=table.c.published_at.is_(None),
    )
    return table


@dataclass(frozen=True, slots=True)
class Event:
    """One platform event: ``id`` is unique across services (``items:42``)."""

    id: str
    type: str
    payload: dict[str, Any]
    occurred_at: str

    def fields(self) -> dict[str, str]:
        """The event as flat string fields (a Redis Stream entry)."""
        return {
            "id": self.id,
            "type": self.type,
            "payload": json.dumps(self.payload, separators=(",", ":")),
            "occurred_at": self.occurred_at,
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Event:
        """Parse a stream entry written by :meth:`fields`."""
        text = {key.decode(): value.decode() for key, value in fields.items()}
        return cls(
            id=text["id"],
            type=text["type"],
            payload=json.loads(text["payload"]),
            occurred_at=text["occurred_at"],
        )


async def record_event(
    session: AsyncSession, outbox: Table, event_type: str, payload: bytes
) -> None:
    """Add an event to the outbox, inside the caller's transaction."""
    await session.execute(
        insert(outbox).values(event_type=event_type, payload=payload.decode(), occurred_at=utcnow())
    )


EventHandler = Callable[[Event], Awaitable[None]]


class EventStream(Protocol):
    """Where relays publish events."""

    async def publish(self, events: Sequence[Event]) -> None:
        """Deliver ``events`` to the stream; raise if they could not all be accepted."""


class NoConsumerError(RuntimeError):
    """An in-process stream has nobody to hand events to (yet)."""


class InProcessEventStream:
    """The embedded default: publishing hands each event straight to the in-process consumers."""

    def __init__(self) -> None:
        self._handlers: list[EventHandler] = []

    def subscribe(self, handler: EventHandler) -> None:
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
    """A Redis Stream shared by every service; consumers read it through consumer groups."""

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.key = key

    async def publish(self, events: Sequence[Event]) -> None:
        """XADD every event in one round trip, trimming the stream approximately."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(
                    self.key,
                    event.fields(),  # type: ignore[arg-type]
                    maxlen=STREAM_MAX_LENGTH,
                    approximate=True,
                )
            await pipe.execute()

    async def ensure_group(self, group: str) -> None:
        """Create the consumer group (and the stream) if missing, starting from the beginning."""
        try:
            await self.redis.xgroup_create(self.key, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(
        self, group: str, consumer: str, *, count: int, block_ms: int
    ) -> list[tuple[bytes, Event]]:
        """New entries for this consumer (blocking up to ``block_ms``)."""
        reply: list[Any] = await self.redis.xreadgroup(  # type: ignore[assignment]
            group, consumer, {self.key: ">"}, count=count, block=block_ms
        )
        return [
            (entry_id, Event.from_fields(fields))
            for _, entries in reply or []
            for entry_id, fields in entries
        ]

    async def claim_stale(
        self, group: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[tuple[bytes, Event]]:
        """Take over entries a dead consumer read but never acknowledged (XAUTOCLAIM)."""
        reply: list[Any] = await self.redis.xautoclaim(
            self.key, group, consumer, min_idle_time=min_idle_ms, start_id="0", count=count
        )
        entries = reply[1] if len(reply) > 1 else []
        return [(entry_id, Event.from_fields(fields)) for entry_id, fields in entries if fields]

    async def ack(self, group: str, entry_ids: Sequence[bytes]) -> None:
        """Acknowledge handled entries."""
        if entry_ids:
            await self.redis.xack(self.key, group, *entry_ids)


def consumer_name() -> str:
    """A name unique to this process, stable for its lifetime (host and pid)."""
    return f"{socket.gethostname()}-{os.getpid()}"


async def relay_outbox(
    *,
    database: Database,
    outbox: Table,
    source: str,
    stream: EventStream,
    pause: Callable[[float], Awaitable[bool]],
) -> None:
    """Until ``pause`` says stop: move unpublished rows to the stream, oldest first, then mark."""
    backoff = RELAY_IDLE_SECONDS
    while True:
        try:
            moved = await _relay_batch(database, outbox, source, stream)
        except NoConsumerError:
            moved = 0
        except Exception as exc:  # noqa: BLE001 -- the relay must outlive any failure
            logger.warning("relaying %s events failed, will retry: %r", source, exc)
            backoff = min(backoff * 2, RELAY_MAX_BACKOFF_SECONDS)
            if await pause(backoff):
                return
            continue
        backoff = RELAY_IDLE_SECONDS
        if await pause(RELAY_IDLE_SECONDS if moved < RELAY_BATCH else 0):
            return


async def _relay_batch(database: Database, outbox: Table, source: str, stream: EventStream) -> int:
    async with database.sessions() as session, session.begin():
        query = (
            select(outbox.c.id, outbox.c.event_type, outbox.c.payload, outbox.c.occurred_at)
            .where(outbox.c.published_at.is_(None))
            .order_by(outbox.c.id)
            .limit(RELAY_BATCH)
        )
        if database.dialect == "postgresql":
            # Replicas relay side by side without taking the same rows.
            query = query.with_for_update(skip_locked=True)
        rows = (await session.execute(query)).all()
        if not rows:
            return 0
        events = [
            Event(
                id=f"{source}:{row.id}",
                type=row.event_type,
                payload=json.loads(row.payload),
                occurred_at=_rfc3339(row.occurred_at),
            )
            for row in rows
        ]
        await stream.publish(events)
        await session.execute(
            update(outbox)
            .where(outbox.c.id.in_([row.id for row in rows]))
            .values(published_at=utcnow())
        )
    return len(rows)


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
