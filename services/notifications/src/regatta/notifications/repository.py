"""All SQL of the notifications service."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from regatta.common.data.columns import utcnow
from regatta.notifications.models import CLAIMABLE, Notification, Subscription, uuid7


async def insert_notification(session: AsyncSession, values: dict[str, Any]) -> Notification:
    """A new queued notification, due now."""
    now = utcnow()
    notification = Notification(
        id=uuid7(),
        status="queued",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
        **values,
    )
    session.add(notification)
    await session.flush()
    return notification


async def get_notification(
    session: AsyncSession, notification_id: uuid.UUID
) -> Notification | None:
    """One notification, or None."""
    return await session.get(Notification, notification_id)


async def page_notifications(
    session: AsyncSession, *, after: uuid.UUID | None, limit: int, status: str | None
) -> Sequence[Notification]:
    """Up to ``limit + 1`` notifications after ``after``, oldest first."""
    query = select(Notification).order_by(Notification.id).limit(limit + 1)
    if after is not None:
        query = query.where(Notification.id > after)
    if status is not None:
        query = query.where(Notification.status == status)
    return (await session.scalars(query)).all()


async def claim_due(
    session: AsyncSession, *, worker: str, batch: int, lease: timedelta
) -> Sequence[Notification]:
    """Claim due work: queued and due, or abandoned by a worker whose lease ran out.

    A claim moves ``next_attempt_at`` to the end of its lease, so one condition covers both
    (a row is claimable once ``next_attempt_at`` has passed, whether queued or sending) and
    one range scan of the partial index ``ix_notifications_claimable``, in order, stops after
    ``batch`` rows: no sort of every due row, however long the backlog. A claim that set
    ``claimed_until`` alone (a worker of the release before, during an upgrade) still holds
    until then: a filter on the rows read, not another scan.
    """
    now = utcnow()
    until = now + lease
    due = (
        select(Notification.id)
        .where(
            text(CLAIMABLE),
            Notification.next_attempt_at <= now,
            or_(Notification.claimed_until.is_(None), Notification.claimed_until <= now),
        )
        .order_by(Notification.next_attempt_at)
        .limit(batch)
        # Workers claim side by side without waiting on each other's rows (Postgres).
        .with_for_update(skip_locked=True)
    )
    claimed = await session.scalars(
        update(Notification)
        .where(Notification.id.in_(due.scalar_subquery()))
        .values(
            status="sending",
            claimed_by=worker,
            claimed_until=until,
            next_attempt_at=until,
            attempts=Notification.attempts + 1,
            updated_at=now,
        )
        .returning(Notification)
    )
    return claimed.all()


async def record_outcome(
    session: AsyncSession,
    notification_id: uuid.UUID,
    *,
    worker: str,
    values: dict[str, Any],
) -> bool:
    """Store an attempt's result, if this worker still holds the claim."""
    result = await session.execute(
        update(Notification)
        .where(
            Notification.id == notification_id,
            Notification.claimed_by == worker,
            Notification.status == "sending",
        )
        .values(claimed_by=None, claimed_until=None, updated_at=utcnow(), **values)
    )
    return bool(getattr(result, "rowcount", 0))


async def due_backlog(session: AsyncSession) -> tuple[int, datetime | None]:
    """How many notifications a worker could claim now, and since when the oldest could.

    Queued and due, or sending under a lease that ran out: the claim's own condition, so
    that the claimable index answers it by itself (an index-only scan).
    """
    count, oldest = (
        await session.execute(
            select(func.count(), func.min(Notification.next_attempt_at)).where(
                text(CLAIMABLE), Notification.next_attempt_at <= utcnow()
            )
        )
    ).one()
    return int(count), oldest


async def release_claims(session: AsyncSession, *, worker: str) -> int:
    """Hand back what this worker holds, uncounted, so another takes it at once (shutdown)."""
    result = await session.execute(
        update(Notification)
        .where(Notification.claimed_by == worker, Notification.status == "sending")
        .values(
            status="queued",
            claimed_by=None,
            claimed_until=None,
            attempts=Notification.attempts - 1,
            next_attempt_at=utcnow(),
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def insert_subscription(session: AsyncSession, *, event: str, url: str) -> Subscription:
    """A new subscription."""
    subscription = Subscription(id=uuid7(), event=event, url=url, created_at=utcnow())
    session.add(subscription)
    await session.flush()
    return subscription


async def get_subscription(
    session: AsyncSession, subscription_id: uuid.UUID
) -> Subscription | None:
    """One subscription, or None."""
    return await session.get(Subscription, subscription_id)


async def page_subscriptions(
    session: AsyncSession, *, after: uuid.UUID | None, limit: int
) -> Sequence[Subscription]:
    """Up to ``limit + 1`` subscriptions after ``after``, oldest first."""
    query = select(Subscription).order_by(Subscription.id).limit(limit + 1)
    if after is not None:
        query = query.where(Subscription.id > after)
    return (await session.scalars(query)).all()


async def delete_subscription(session: AsyncSession, subscription_id: uuid.UUID) -> bool:
    """Delete a subscription; False when it did not exist."""
    result = await session.execute(delete(Subscription).where(Subscription.id == subscription_id))
    return bool(getattr(result, "rowcount", 0))


async def subscribers(session: AsyncSession, event_type: str) -> Sequence[Subscription]:
    """Every subscription to ``event_type``."""
    query = select(Subscription).where(Subscription.event == event_type).order_by(Subscription.id)
    return (await session.scalars(query)).all()


async def insert_event_notification(
    session: AsyncSession,
    *,
    subscription: Subscription,
    event_id: str,
    event_type: str,
    payload: dict[str, Any],
    now: datetime,
    trace_context: str | None = None,
) -> None:
    """Queue one webhook for a subscription, unless this event already queued it."""
    values = {
        "id": uuid7(),
        "channel": "webhook",
        "url": subscription.url,
        "payload": payload,
        "event_type": event_type,
        "event_id": event_id,
        "subscription_id": subscription.id,
        "status": "queued",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
        "trace_context": trace_context,
    }
    dialect = session.get_bind().dialect.name
    builder = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = builder(Notification).values(values)
    await session.execute(
        statement.on_conflict_do_nothing(index_elements=["subscription_id", "event_id"])
    )
