"""Rules of the notifications service: accept durably, deliver with retries, fan out events."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Final
from urllib.parse import urlsplit

from fastapi import Request
from opentelemetry.trace import Status, StatusCode, Tracer
from pydantic import AnyHttpUrl
from sqlalchemy.ext.asyncio import AsyncSession

from regatta.common.data.columns import utcnow
from regatta.common.data.db import Database
from regatta.common.data.idempotency import IdempotencyStore, StoredResponse, keyed_request
from regatta.common.http.pagination import UuidPageRequest, next_cursor
from regatta.common.http.problems import ProblemError, invalid_field
from regatta.common.redis.cache import CachedResponse
from regatta.common.redis.events import Event
from regatta.common.settings import ServiceSettings
from regatta.common.telemetry.metrics import trace_exemplar
from regatta.common.telemetry.tracing import continue_trace, current_trace_context
from regatta.notifications import repository
from regatta.notifications.delivery import Deliverer, Outcome
from regatta.notifications.metrics import WorkerMetrics
from regatta.notifications.models import Notification
from regatta.notifications.schemas import (
    EmailCreate,
    NotificationPage,
    NotificationRead,
    SubscriptionCreate,
    SubscriptionPage,
    SubscriptionRead,
    WebhookCreate,
)
from regatta.notifications.settings import NotificationsSettings
from regatta.notifications.ssrf import AddressPolicy, BlockedAddressError

logger = logging.getLogger("regatta.notifications")

SERVICE_NAME = "notifications"
WAKEUP = "notifications"  # the in-process nudge from the API to a worker in the same process
# How an attempt ended, by the status it left: what metrics and log lines call it.
OUTCOMES: Final = {"delivered": "delivered", "queued": "retry", "failed": "failed"}


def notifications_settings(settings: ServiceSettings) -> NotificationsSettings:
    """The notifications view of a process's settings (the embedded app shares one object)."""
    if isinstance(settings, NotificationsSettings):
        return settings
    return NotificationsSettings(**settings.model_dump())


def parse_id(raw: str, what: str) -> uuid.UUID:
    """A UUID from the path; anything else names nothing that exists (404)."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ProblemError(404, f"No {what} has id {raw[:64]!r}.", slug="not-found") from None


def check_url(url: AnyHttpUrl, policy: AddressPolicy) -> None:
    """Refuse a URL whose host is a literal address webhooks may not reach (422)."""
    try:
        policy.check_literal_host(url.host or "")
    except BlockedAddressError as exc:
        raise invalid_field("url", "body", f"not a reachable public address: {exc}") from exc


async def create_notification(
    *,
    request: Request,
    session: AsyncSession,
    store: IdempotencyStore,
    policy: AddressPolicy,
    idempotency_key: str | None,
    principal: str,
    notification: EmailCreate | WebhookCreate,
) -> StoredResponse:
    """Store a notification (committed before this returns) and answer 202."""
    if isinstance(notification, WebhookCreate):
        check_url(notification.url, policy)
        values: dict[str, object] = {
            "channel": "webhook",
            "url": str(notification.url),
            "payload": notification.payload,
        }
    else:
        values = {
            "channel": "email",
            "recipient": str(notification.to),
            "subject": notification.subject,
            "body": notification.body,
        }
    values["trace_context"] = current_trace_context()

    async def write(write_session: AsyncSession) -> StoredResponse:
        row = await repository.insert_notification(write_session, values)
        body = NotificationRead.model_validate(row).model_dump_json().encode()
        return StoredResponse(
            status_code=202, body=body, headers={"Location": f"/notifications/{row.id}"}
        )

    keyed = keyed_request(
        method=request.method,
        path=request.url.path,
        key=idempotency_key,
        scope=principal,
        payload=notification.model_dump(mode="json"),
    )
    return await store.run(session, keyed, write)


async def get_notification(*, session: AsyncSession, notification_id: str) -> CachedResponse:
    """One notification and its delivery state, rendered, with an ETag of what it says."""
    row = await repository.get_notification(session, parse_id(notification_id, "notification"))
    if row is None:
        raise ProblemError(404, f"No notification has id {notification_id}.", slug="not-found")
    body = NotificationRead.model_validate(row).model_dump_json().encode()
    # No version column: the tag is a digest of the representation, which changes with it.
    tag = base64.urlsafe_b64encode(hashlib.sha256(body).digest()[:18]).decode()
    return CachedResponse(version=0, etag=f'"{tag}"', body=body)


async def list_notifications(
    *, session: AsyncSession, page: UuidPageRequest, status: str | None
) -> NotificationPage:
    """A page of notifications, oldest first."""
    rows = await repository.page_notifications(
        session, after=page.after, limit=page.limit, status=status
    )
    return NotificationPage(
        data=[NotificationRead.model_validate(r) for r in rows[: page.limit]],
        next_cursor=next_cursor([r.id for r in rows], page.limit),
    )


async def create_subscription(
    *,
    request: Request,
    session: AsyncSession,
    store: IdempotencyStore,
    policy: AddressPolicy,
    idempotency_key: str | None,
    principal: str,
    subscription: SubscriptionCreate,
) -> StoredResponse:
    """Subscribe a webhook to one event type: 201 with its Location, once per key."""
    check_url(subscription.url, policy)

    async def write(write_session: AsyncSession) -> StoredResponse:
        row = await repository.insert_subscription(
            write_session, event=subscription.event, url=str(subscription.url)
        )
        body = SubscriptionRead.model_validate(row).model_dump_json().encode()
        return StoredResponse(
            status_code=201,
            body=body,
            headers={"Location": f"/notifications/subscriptions/{row.id}"},
        )

    keyed = keyed_request(
        method=request.method,
        path=request.url.path,
        key=idempotency_key,
        scope=principal,
        payload=subscription.model_dump(mode="json"),
    )
    return await store.run(session, keyed, write)


async def get_subscription(*, session: AsyncSession, subscription_id: str) -> SubscriptionRead:
    """One subscription."""
    row = await repository.get_subscription(session, parse_id(subscription_id, "subscription"))
    if row is None:
        raise ProblemError(404, f"No subscription has id {subscription_id}.", slug="not-found")
    return SubscriptionRead.model_validate(row)


async def list_subscriptions(*, session: AsyncSession, page: UuidPageRequest) -> SubscriptionPage:
    """A page of subscriptions, oldest first."""
    rows = await repository.page_subscriptions(session, after=page.after, limit=page.limit)
    return SubscriptionPage(
        data=[SubscriptionRead.model_validate(r) for r in rows[: page.limit]],
        next_cursor=next_cursor([r.id for r in rows], page.limit),
    )


async def delete_subscription(*, session: AsyncSession, subscription_id: str) -> None:
    """Remove a subscription (notifications it already queued are still delivered)."""
    async with session.begin():
        deleted = await repository.delete_subscription(
            session, parse_id(subscription_id, "subscription")
        )
    if not deleted:
        raise ProblemError(404, f"No subscription has id {subscription_id}.", slug="not-found")


async def fan_out(database: Database, event: Event) -> int:
    """Queue one webhook per subscription to ``event``; repeats of an event queue nothing."""
    now = utcnow()
    async with database.sessions() as session, session.begin():
        subscriptions = await repository.subscribers(session, event.type)
        payload = {
            "id": event.id,
            "type": event.type,
            "occurred_at": event.occurred_at,
            "data": json.loads(event.payload),
        }
        for subscription in subscriptions:
            await repository.insert_event_notification(
                session,
                subscription=subscription,
                event_id=event.id,
                event_type=event.type,
                payload=payload,
                now=now,
                trace_context=current_trace_context(),
            )
    return len(subscriptions)


async def attempt_delivery(  # noqa: PLR0917 -- one attempt needs all of these
    database: Database,
    deliverer: Deliverer,
    worker: str,
    settings: NotificationsSettings,
    notification: Notification,
    metrics: WorkerMetrics,
    tracer: Tracer,
) -> None:
    """Attempt one claimed notification and record the outcome (if the claim is still ours)."""
    channel = notification.channel
    with continue_trace(
        tracer,
        f"deliver {channel}",
        notification.trace_context,
        attributes={
            "regatta.notification_id": str(notification.id),
            "regatta.channel": channel,
            "regatta.attempt": notification.attempts,
        },
    ) as span:
        started = time.perf_counter()
        if notification.attempts > settings.delivery_max_attempts:
            # A worker died holding it after its last attempt: give up, loudly.
            outcome = Outcome(delivered=False, error="delivery abandoned: attempts exhausted")
        else:
            try:
                outcome = await deliverer.deliver(notification)
            except Exception as exc:
                # A failure nobody foresaw is still an attempt's outcome: it is recorded and
                # retried like any other, never left to loop through lease expiries.
                logger.exception("unexpected error delivering %s", notification.id)
                outcome = Outcome(
                    delivered=False, error=f"unexpected error: {type(exc).__name__}: {exc}"[:1000]
                )
        duration = time.perf_counter() - started
        values = outcome_values(notification, outcome, settings)
        async with database.sessions() as session, session.begin():
            await repository.record_outcome(session, notification.id, worker=worker, values=values)
        result = OUTCOMES[str(values["status"])]
        if outcome.error is not None:
            span.set_status(Status(StatusCode.ERROR, outcome.error[:200]))
        metrics.deliveries.labels(channel, result).inc()
        metrics.attempt_duration.labels(channel).observe(duration, exemplar=trace_exemplar())
        if result != "retry":
            accepted_for = (utcnow() - notification.created_at).total_seconds()
            metrics.latency.labels(channel, result).observe(max(accepted_for, 0.0))
            metrics.attempts.labels(channel, result).observe(notification.attempts)
        logger.info(
            "delivery %s via %s attempt %d: %s%s",
            notification.id,
            channel,
            notification.attempts,
            values["status"],
            f" ({outcome.error})" if outcome.error else "",
            extra={
                "event": "delivery",
                "notification_id": str(notification.id),
                "channel": channel,
                "target": _target(notification),
                "event_type": notification.event_type,
                "attempt": notification.attempts,
                "outcome": result,
                "status": values["status"],
                "duration_ms": round(duration * 1000, 3),
                "error": outcome.error,
            },
        )


def _target(notification: Notification) -> str | None:
    # Only the host or mail domain: a webhook URL's path may hold a token, an address is personal.
    if notification.channel == "webhook":
        return urlsplit(notification.url or "").hostname
    return (notification.recipient or "").rpartition("@")[2] or None


def backoff_seconds(attempt: int, settings: NotificationsSettings) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]."""
    ceiling = min(
        settings.delivery_backoff_max_seconds,
        settings.delivery_backoff_base_seconds * 2 ** max(attempt - 1, 0),
    )
    return random.uniform(0, ceiling)  # noqa: S311 -- jitter, not cryptography


def outcome_values(
    notification: Notification, outcome: Outcome, settings: NotificationsSettings
) -> dict[str, object]:
    """The columns to store after an attempt."""
    now = utcnow()
    if outcome.delivered:
        return {"status": "delivered", "delivered_at": now, "last_error": None}
    exhausted = notification.attempts >= settings.delivery_max_attempts
    if not outcome.retryable or exhausted:
        return {"status": "failed", "last_error": outcome.error}
    delay = timedelta(seconds=backoff_seconds(notification.attempts, settings))
    return {"status": "queued", "last_error": outcome.error, "next_attempt_at": now + delay}


async def claim_due(
    *, database: Database, worker: str, settings: NotificationsSettings, limit: int
) -> Sequence[Notification]:
    """Claim up to ``limit`` due notifications for ``worker`` (a lease of the configured length)."""
    async with database.sessions() as session, session.begin():
        return await repository.claim_due(
            session,
            worker=worker,
            batch=limit,
            lease=timedelta(seconds=settings.delivery_lease_seconds),
        )
