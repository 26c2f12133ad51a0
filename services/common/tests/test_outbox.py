"""The outbox's statements: relays side by side never take the same events; the backlog.

On Postgres every replica of a service runs a relay over the same outbox. Each takes its batch
with ``FOR UPDATE SKIP LOCKED``, so two batches in flight at once hold different events and no
event is published twice by the replicas themselves (the stream's consumers would drop a
duplicate by its id, but only after paying for it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry.trace import NoOpTracer
from pydantic import SecretStr
from sqlalchemy import MetaData, Table

from regatta.common.data import db
from regatta.common.data.executor import statements_of
from regatta.common.data.outbox import backlog, outbox_table, record_event
from regatta.common.redis.events import RELAY_BATCH, Event, _Relay
from regatta.common.settings import Environment, ServiceSettings
from regatta.common.telemetry.metrics import PlatformMetrics

EVENTS = RELAY_BATCH * 2 + 17


@pytest.fixture
async def outbox(postgres_url: str) -> AsyncIterator[tuple[db.Database, Table]]:
    """A database of two sessions' worth of connections, with an outbox table."""
    database = db.create_database(
        ServiceSettings(
            environment=Environment.TEST, database_url=SecretStr(postgres_url), db_pool_size=6
        )
    )
    table = outbox_table(MetaData(), "things_outbox")
    async with database.engine.begin() as connection:
        await connection.run_sync(table.metadata.create_all)
    try:
        yield database, table
    finally:
        await database.close()


class MeetingStream:
    """A stream whose publishes wait (a while, at most) until ``meet`` are in flight at once."""

    def __init__(self, meet: int = 1) -> None:
        self.meet = meet
        self.published: list[str] = []
        self.in_flight = self.most_in_flight = 0
        self._met = asyncio.Event()

    async def publish(self, events: Sequence[Event]) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight >= self.meet:
            self._met.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._met.wait()
        self.in_flight -= 1
        self.published.extend(event.id for event in events)


async def record(database: db.Database, table: Table, count: int) -> None:
    async with database.sessions() as session, session.begin():
        for n in range(count):
            await record_event(
                statements_of(session), table, "thing.created", b'{"n":%d}' % n, None
            )


def relay(database: db.Database, table: Table, stream: MeetingStream) -> _Relay:
    metrics = PlatformMetrics(service_name="things", services=["things"])
    return _Relay(database, table, "things", stream, metrics, NoOpTracer())


async def test_relays_side_by_side_take_different_events(
    outbox: tuple[db.Database, Table],
) -> None:
    database, table = outbox
    await record(database, table, EVENTS)
    stream = MeetingStream(meet=2)
    first, second = relay(database, table, stream), relay(database, table, stream)
    moved = await asyncio.gather(first.relay_batch(), second.relay_batch())
    assert [*moved] == [RELAY_BATCH, RELAY_BATCH]
    # Both batches were out at once (a plain FOR UPDATE would have made the second wait for the
    # first's commit), and they held different events.
    assert stream.most_in_flight == 2
    assert len(set(stream.published)) == 2 * RELAY_BATCH
    while await first.relay_batch():
        pass
    assert sorted(stream.published) == sorted(f"things:{n}" for n in range(1, EVENTS + 1))


async def test_the_backlog_counts_the_waiting_events_and_dates_the_oldest(
    outbox: tuple[db.Database, Table],
) -> None:
    database, table = outbox
    async with database.sessions() as session:
        assert await backlog(session, table) == (0, None)
    before = datetime.now(UTC)
    await record(database, table, 3)
    async with database.sessions() as session:
        count, oldest = await backlog(session, table)
    assert count == 3
    assert oldest is not None
    assert before - timedelta(seconds=1) <= oldest <= datetime.now(UTC)
    await relay(database, table, MeetingStream()).relay_batch()
    async with database.sessions() as session:
        assert await backlog(session, table) == (0, None)
