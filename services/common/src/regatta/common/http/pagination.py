"""Keyset pagination with opaque cursors: ``?limit=&cursor=`` → ``{"data", "next_cursor"}``."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Self, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request

from regatta.common.data.repository import MAX_ID
from regatta.common.http.problems import invalid_field

K = TypeVar("K")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_CURSOR_VERSION = 1
_MAX_CURSOR_LENGTH = 200


def encode_cursor(after: int | str) -> str:
    """An opaque token meaning "the rows after this id"."""
    if type(after) is int:  # what json.dumps writes for an int, without its encoder (lists)
        raw = b'{"v":%d,"after":%d}' % (_CURSOR_VERSION, after)
    else:
        raw = json.dumps({"v": _CURSOR_VERSION, "after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(cursor: str) -> object:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        return payload["after"] if payload.get("v") == _CURSOR_VERSION else None
    except (ValueError, KeyError, TypeError, AttributeError):  # binascii and Unicode errors too
        return None


def _integer_id(value: object) -> int | None:
    return value if type(value) is int and 0 <= value <= MAX_ID else None


def _uuid_id(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _decode(cursor: str, parse: Callable[[object], K | None]) -> K:
    after = parse(_parse_cursor(cursor)) if len(cursor) <= _MAX_CURSOR_LENGTH else None
    if after is None:
        raise invalid_field(
            "cursor", "query", "malformed cursor: pass back a next_cursor unchanged", kind="cursor"
        )
    return after


def decode_cursor(cursor: str) -> int:
    """The integer id a cursor points after; a malformed cursor is the client's mistake (422)."""
    return _decode(cursor, _integer_id)


class PageRequest(BaseModel):
    """The parsed ``limit`` and ``cursor`` of a list request over integer ids."""

    limit: int
    after: int | None


class UuidPageRequest(BaseModel):
    """The parsed ``limit`` and ``cursor`` of a list request over (time-ordered) UUIDs."""

    limit: int
    after: uuid.UUID | None


class PageQuery(BaseModel):
    """A list's query: ``limit``, ``cursor`` and a subclass's filters, validated by :meth:`of`.

    Cheaper than a FastAPI query model; its route documents it with ``query_parameters``.
    """

    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Page size.")
    cursor: str | None = Field(
        None,
        description="The next_cursor of the previous page.",
        pattern=r"^[A-Za-z0-9_-]{1,200}$",  # base64url, as encode_cursor writes it
    )

    @classmethod
    def of(cls, request: Request) -> Self:
        """The request's query, validated: a 422 names each field, as for any parameter."""
        try:
            return cls.model_validate(request.query_params)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            raise RequestValidationError(
                [{**error, "loc": ("query", *error["loc"])} for error in errors]
            ) from None

    def page(self) -> PageRequest:
        """The page asked for, over integer ids (a malformed cursor is a 422)."""
        return PageRequest(
            limit=self.limit, after=decode_cursor(self.cursor) if self.cursor else None
        )

    def uuid_page(self) -> UuidPageRequest:
        """The page asked for, over UUIDs (a malformed cursor is a 422)."""
        return UuidPageRequest(
            limit=self.limit, after=_decode(self.cursor, _uuid_id) if self.cursor else None
        )


def next_cursor(ids: Sequence[int | uuid.UUID], limit: int) -> str | None:
    """Given the ids fetched with ``limit + 1``, the cursor of the following page or None."""
    if len(ids) <= limit:
        return None
    last = ids[limit - 1]
    return encode_cursor(str(last) if isinstance(last, uuid.UUID) else last)
