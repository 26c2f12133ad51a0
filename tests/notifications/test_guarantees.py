"""Promises a one-line slip would break silently: claims, one notification per event, takeover."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from regatta.common.data.columns import utcnow
from regatta.common.data.db import Database
from regatta.common.http.context import platform_of
from regatta.common.redis.events import Event, RedisEventStream
from regatta.common.telemetry.tracing import tracer as tracer_for
from regatta.notifications import repository, worker
from regatta.notifications.delivery import Deliverer
from regatta.notifications.main import create_app as create_notifications_app
from regatta.notifications.metrics import WorkerMetrics
from regatta.notifications.models import Notification
from regatta.notifications.service import attempt_delivery
from regatta.notifications.settings import NotificationsSettings
from tests.conftest import AppFactory
from tests.eventually import eventually
from tests.lifespan import lifespan


async def _row(database: Database, notification_id: uuid.UUID) -> Notification:
    async with database.sessions() as session:
        row = await repository.get_notification(session, notification_id)
    assert row is not None
    return row


async def test_a_worker_whose_claim_was_taken_over_records_nothing(
    settings: NotificationsSettings,
) -> None:
    app = create_notifications_app(settings)  # the API alone: no worker of its own
    async with lifespan(app):
        database: Database = platform_of(app).serving.database
        async with database.sessions() as session, session.begin():
            queued = await repository.insert_notification(
                session,
                {"channel": "email", "recipient": "a@example.com", "subject": "s", "body": "b"},
            )
        # Worker "slow" claims it; its lease runs out while it is (say) still sending.
        async with database.sessions() as session, session.begin():
            (slow_claim,) = await repository.claim_due(
                session, worker="slow", batch=10, lease=timedelta(milliseconds=1)
            )
        await asyncio.sleep(0.05)
        async with database.sessions() as session, session.begin():
            (taken,) = await repository.claim_due(
                session, worker="taker", batch=10, lease=timedelta(seconds=60)
            )
        assert taken.id == queued.id
        assert taken.attempts == 2  # the taker's attempt counts

        # The slow worker finishes its attempt (the console backend: "delivered") ...
        deliverer = Deliverer(settings)
        try:
            await attempt_delivery(
                database,
                deliverer,
                "slow",
                settings,
                slow_claim,
                WorkerMetrics(CollectorRegistry()),
                tracer_for(None, __name__),
            )
        finally:
            await deliverer.close()
        # ... and records nothing: the notification is the taker's, still being sent.
        row = await _row(database, queued.id)
        assert (row.status, row.claimed_by, row.delivered_at) == ("sending", "taker", None)
        async with database.sessions() as session, session.begin():
            stale = await repository.record_outcome(
                session, queued.id, worker="slow", values={"status": "failed"}
            )
            current = await repository.record_outcome(
                session,
                queued.id,
                worker="taker",
                values={"status": "delivered", "delivered_at": utcnow()},
            )
        assert (stale, current) == (False, True)
        row = await _row(database, queued.id)
        assert (row.status, row.claimed_by) == ("delivered", None)


def _event(event_id: str) -> Event:
    return Event(
        id=event_id,
        type="item.created",
        payload='{"id":7,"name":"Lamp"}',
        occurred_at=utcnow().isoformat(),
    )


async def _subscribe(database: Database, count: int) -> None:
    # The worker delivers what the events make: to a loopback port nothing listens on (refused
    # at once), never out to the internet.
    async with database.sessions() as session, session.begin():
        for n in range(count):
            await repository.insert_subscription(
                session, event="item.created", url=f"http://127.0.0.1:9/hook/{n}"
            )


async def _event_notifications(database: Database, event_id: str) -> list[Notification]:
    # Every event notification in this test's fresh database: whatever id they were stored
    # under, they came from ``event_id``, the only event published.
    async with database.sessions() as session:
        rows = await repository.page_notifications(session, after=None, limit=100, status=None)
    assert all(event_id in (row.event_id or "") for row in rows)
    return list(rows)


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
@pytest.mark.postgres
async def test_an_event_delivered_twice_makes_one_notification_per_subscription(
    start_app: AppFactory,
) -> None:
    async with start_app() as app:  # the API and the worker, on Postgres and real Redis
        database: Database = platform_of(app).serving.database
        stream = platform_of(app).serving.events
        assert isinstance(stream, RedisEventStream)
        group = worker.ConsumerGroup(stream.redis, stream.key)
        await _subscribe(database, 2)
        await group.ensure()
        event_id = f"items:{uuid.uuid4().hex[:8]}"
        # At least once: the relay published it twice (say it died before marking it sent).
        await stream.publish([_event(event_id), _event(event_id)])

        async def both_handled() -> bool:
            lag, pending = await group.lag()
            return (
                lag == 0
                and pending == 0
                and len(await _event_notifications(database, event_id)) >= 2
            )

        await eventually(both_handled)
        made = await _event_notifications(database, event_id)
    assert len(made) == 2, [(n.subscription_id, n.event_id) for n in made]
    assert len({n.subscription_id for n in made}) == 2


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
@pytest.mark.postgres
async def test_entries_of_a_dead_consumer_are_taken_over(
    settings: NotificationsSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings.redis_url is not None
    monkeypatch.setattr(worker, "STALE_AFTER_MS", 200)  # idle this long: its consumer is dead
    api = create_notifications_app(settings)  # no worker yet
    async with lifespan(api):
        database: Database = platform_of(api).serving.database
        stream = platform_of(api).serving.events
        assert isinstance(stream, RedisEventStream)
        group = worker.ConsumerGroup(stream.redis, stream.key)
        await _subscribe(database, 1)
        await group.ensure()
        event_id = f"items:{uuid.uuid4().hex[:8]}"
        await stream.publish([_event(event_id)])
        # A consumer on its own connection reads the entry and dies before acknowledging it.
        doomed = Redis.from_url(settings.redis_url.get_secret_value())
        try:
            read = await worker.ConsumerGroup(doomed, stream.key).read(
                "doomed-consumer", count=10, block_ms=1000
            )
        finally:
            await doomed.aclose()
        assert [event.id for _, event in read] == [event_id]
        assert await _event_notifications(database, event_id) == []

        async with lifespan(worker.create_worker_app(settings.model_copy())):

            async def taken_over() -> bool:
                return len(await _event_notifications(database, event_id)) == 1

            await eventually(taken_over)
            _, pending = await group.lag()
            assert pending == 0
