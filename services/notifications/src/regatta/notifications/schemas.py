"""Request and response bodies of the notifications service."""

from __future__ import annotations

import math
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    UrlConstraints,
)
from pydantic_core import PydanticCustomError

from regatta.common.http.schemas import CheckedText, CreateSchema, Storable, storable_text

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
    AnyHttpUrl,
    UrlConstraints(max_length=2048, allowed_schemes=["http", "https"]),
    # "format: uri" admits any scheme; say which ones the validator takes.
    Field(json_schema_extra={"pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"}),
]


# C0 and C1 controls (CR, LF, NEL among them) and the Unicode line and paragraph separators:
# in a mail header any of them can end the line, and what follows becomes a header of its own.
_NOT_IN_HEADERS = "\x00-\x1f\x7f-\x9f\u2028\u2029"
_HEADER_UNSAFE = re.compile(f"[{_NOT_IN_HEADERS}]")


def header_text(value: str) -> str:
    """``value`` unchanged, or an error when it cannot go into a mail header as one line."""
    storable_text(value)
    if _HEADER_UNSAFE.search(value):
        raise PydanticCustomError(
            "header_unsafe", "must not contain control characters or line separators"
        )
    return value


# A field that becomes (part of) a mail header: the subject, the addresses.
HeaderText = CheckedText(header_text, "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$")


class EmailCreate(CreateSchema):
    """An e-mail to send."""

    channel: Literal["email"]
    to: Annotated[EmailStr, HeaderText]
    subject: Annotated[str, Field(min_length=1, max_length=200), HeaderText]
    body: Annotated[str, Field(max_length=100_000), Storable]


def _portable_json(value: Any) -> Any:
    # Python's JSON parser takes NaN and Infinity, and strings with NUL or half a surrogate
    # pair: none of them is JSON a receiver can rely on, nor something every database stores.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise PydanticCustomError("finite_number", "JSON numbers are finite")
        elif isinstance(item, str):
            storable_text(item)
    return value


class WebhookCreate(CreateSchema):
    """A JSON document to POST to a URL."""

    channel: Literal["webhook"]
    url: WebhookUrl
    payload: Annotated[
        dict[str, Any] | list[Any],
        AfterValidator(_portable_json),
        Field(description="Any JSON object or array; its strings may not contain NUL."),
    ]


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
