"""Request and response bodies of the notifications service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, EmailStr, Field, UrlConstraints

from regatta.common.schemas import CreateSchema, Storable

EVENT_TYPES = (
    "item.created",
    "item.updated",
    "item.deleted",
    "hero.created",
    "hero.updated",
    "hero.deleted",
)
EventType = Literal[
    "item.created", "item.updated", "item.deleted", "hero.created", "hero.updated", "hero.deleted"
]
Status = Literal["queued", "sending", "delivered", "failed"]
WebhookUrl = Annotated[
    AnyHttpUrl, UrlConstraints(max_length=2048, allowed_schemes=["http", "https"])
]


class EmailCreate(CreateSchema):
    """An e-mail to send."""

    channel: Literal["email"]
    to: EmailStr
    subject: Annotated[str, Field(min_length=1, max_length=200), Storable]
    body: Annotated[str, Field(max_length=100_000), Storable]


class WebhookCreate(CreateSchema):
    """A JSON document to POST to a URL."""

    channel: Literal["webhook"]
    url: WebhookUrl
    payload: dict[str, Any] | list[Any]


NotificationCreate = Annotated[EmailCreate | WebhookCreate, Field(discriminator="channel")]


class NotificationRead(BaseModel):
    """A notification and its delivery state (an e-mail's body is not echoed back)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="Also sent as X-Regatta-Delivery, for de-duplication.")
    channel: Literal["email", "webhook"]
    status: Status
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    to: str | None = Field(validation_alias="recipient")
    subject: str | None
    url: str | None
    event: str | None = Field(validation_alias="event_type")
    created_at: datetime
    updated_at: datetime


class NotificationPage(BaseModel):
    """One page of notifications, oldest first."""

    data: list[NotificationRead]
    next_cursor: str | None


class SubscriptionCreate(CreateSchema):
    """Send every event of this type to this URL."""

    event: EventType
    url: WebhookUrl


class SubscriptionRead(BaseModel):
    """A webhook subscription."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    event: str
    url: str
    created_at: datetime


class SubscriptionPage(BaseModel):
    """One page of subscriptions, oldest first."""

    data: list[SubscriptionRead]
    next_cursor: str | None
