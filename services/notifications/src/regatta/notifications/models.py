"""Tables of the notifications service."""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, MetaData, String, Text, UniqueConstraint, Uuid, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from regatta.common.data.columns import UTCDateTime
from regatta.common.data.idempotency import idempotency_table


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): ids sort by creation, so pages do too."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


# The rows the worker may claim (queued, or sending under a lease that may run out), as SQL
# shared by the claim and its partial index, so that the planner sees the index serves it.
CLAIMABLE = "status IN ('queued', 'sending')"


class Base(DeclarativeBase):
    """Declarative base of the notifications tables."""

    metadata = MetaData(naming_convention={"pk": "pk_%(table_name)s"})


class Notification(Base):
    """One message to deliver, and what happened to it."""

    __tablename__ = "notifications"
    __table_args__ = (
        # The worker's claim: the rows it may take, by when they fall due (for a row being
        # sent, when its lease runs out), read in order and only as far as one batch.
        Index(
            "ix_notifications_claimable",
            "next_attempt_at",
            postgresql_where=text(CLAIMABLE),
            sqlite_where=text(CLAIMABLE),
        ),
        Index("ix_notifications_status_id", "status", "id"),
        # One notification per subscription and event, however often the event is delivered.
        UniqueConstraint("subscription_id", "event_id", name="uq_notifications_subscription_event"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16), nullable=False)
    recipient: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(String(200))
    body: Mapped[str | None] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(String(2048))
    payload: Mapped[Any] = mapped_column(JSON)
    event_type: Mapped[str | None] = mapped_column(String(64))
    event_id: Mapped[str | None] = mapped_column(String(128))
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(String(1000))
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The W3C trace context (JSON) of the request or event behind it: deliveries join that trace.
    trace_context: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Subscription(Base):
    """A webhook that receives every platform event of one type."""

    __tablename__ = "notification_subscriptions"
    __table_args__ = (Index("ix_notification_subscriptions_event", "event"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    event: Mapped[str] = mapped_column(String(64), nullable=False)
    url: Mapped[str] = mapped_column(String(2048), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


idempotency_keys = idempotency_table(Base.metadata, "notifications_idempotency_keys")
