"""The claim's lease: held, it keeps other workers off; run out, another worker takes the row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from regatta.common.data.columns import utcnow
from regatta.common.data.db import Database, create_engine
from regatta.common.data.migrations import upgrade
from regatta.notifications import repository
from regatta.notifications.main import SERVICE
from regatta.notifications.models import Notification
from regatta.notifications.settings import NotificationsSettings


@pytest.fixture
async def database(settings: NotificationsSettings) -> AsyncIterator[Database]:
    """The notifications schema on the test's backend, and no worker running."""
    assert SERVICE.migrations is not None
    await upgrade(settings, [SERVICE.migrations])
    database = Database(create_engine(settings))
    try:
        yield database
    finally:
        await database.close()


async def claim(database: Database, worker: str, lease_seconds: float) -> list[str]:
    async with database.sessions() as session, session.begin():
        claimed = await repository.claim_due(
            session, worker=worker, batch=10, lease=timedelta(seconds=lease_seconds)
        )
        return [f"{row.id} {row.attempts}" for row in claimed]


async def test_a_lease_keeps_others_off_until_it_runs_out(database: Database) -> None:
    async with database.sessions() as session, session.begin():
        queued = await repository.insert_notification(
            session, {"channel": "email", "recipient": "a@example.com", "subject": "s", "body": "b"}
        )
    assert await claim(database, "a", 60) == [f"{queued.id} 1"]
    assert await claim(database, "b", 60) == []  # a holds the lease
    async with database.sessions() as session, session.begin():
        # a's lease ends now (as if a had claimed it a minute ago and died)
        await session.execute(
            update(Notification)
            .where(Notification.id == queued.id)
            .values(
                next_attempt_at=utcnow() - timedelta(seconds=1),
                claimed_until=utcnow() - timedelta(seconds=1),
            )
        )
    assert await claim(database, "b", 60) == [f"{queued.id} 2"]
    # a's late outcome is refused: b holds the claim now, and b's is stored.
    async with database.sessions() as session, session.begin():
        late = {"status": "delivered", "delivered_at": utcnow()}
        assert not await repository.record_outcome(session, queued.id, worker="a", values=late)
        assert await repository.record_outcome(session, queued.id, worker="b", values=late)
    assert await claim(database, "c", 60) == []


async def test_a_claim_of_the_previous_release_holds_until_its_lease_ends(
    database: Database,
) -> None:
    # A worker of the release before the upgrade claims as it always did: status, claimed_by
    # and claimed_until, with next_attempt_at left at the (past) time the row fell due.
    async with database.sessions() as session, session.begin():
        queued = await repository.insert_notification(
            session, {"channel": "email", "recipient": "a@example.com", "subject": "s", "body": "b"}
        )
        await session.execute(
            update(Notification)
            .where(Notification.id == queued.id)
            .values(
                status="sending",
                claimed_by="old",
                claimed_until=utcnow() + timedelta(seconds=60),
                next_attempt_at=utcnow() - timedelta(seconds=1),
                attempts=1,
            )
        )
    assert await claim(database, "new", 60) == []  # the old worker is still sending it
    async with database.sessions() as session, session.begin():
        await session.execute(
            update(Notification)
            .where(Notification.id == queued.id)
            .values(claimed_until=utcnow() - timedelta(seconds=1))
        )
    assert await claim(database, "new", 60) == [f"{queued.id} 2"]
