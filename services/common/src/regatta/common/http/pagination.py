"""Keyset pagination with opaque cursors: ``?limit=&cursor=`` → ``{"data", "next_cursor"}``."""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Self, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request

from regatta.common.data.repository import MAX_ID
from regatta.common.http.problems import invalid_field

K = TypeVar("K")

_CURSOR_VERSION = 1
_MAX_CURSOR_LENGTH = 200


def encode_cursor(after: int | str) -> str:
    """An opaque token meaning "the rows after this id"."""
    if type(after) is int:  # what json.dumps writes for an int, without its encoder (lists)
        raw = b'{"v":%d,"after":%d}' % (_CURSOR_VERSION, after)
    else:
        raw = json.dumps({"v": _CURSOR_VERSION, "after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, parse: Callable[[Any], K | None]) -> K:
    """The id ``cursor`` points after, parsed; a 422 for anything encode_cursor did not write."""
    after = None
    if len(cursor) <= _MAX_CURSOR_LENGTH:
        # binascii and Unicode errors are ValueErrors; a payload not a dict, AttributeErrors.
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            padded = cursor + "=" * (-len(cursor) % 4)
            payload = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
            if payload.get("v") == _CURSOR_VERSION:
                after = parse(payload["after"])
    if after is None:
        raise invalid_field(
            "cursor", "query", "malformed cursor: pass back a next_cursor unchanged", kind="cursor"
        )
    return after


def _integer_id(value: object) -> int | None:
    return value if type(value) is int and 0 <= value <= MAX_ID else None


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
    """A list's query: ``limit``, ``cursor`` and a subclass's filters (validated by :meth:`of`)."""

    limit: int = Field(20, ge=1, le=100, description="Page size.")
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
            errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
            raise RequestValidationError(errors) from None

    def page(self) -> PageRequest:
        """The page asked for, over integer ids (a malformed cursor is a 422)."""
        after = decode_cursor(self.cursor) if self.cursor else None
        return PageRequest(limit=self.limit, after=after)

    def uuid_page(self) -> UuidPageRequest:
        """The page asked for, over UUIDs (a malformed cursor is a 422)."""
        after = _decode(self.cursor, uuid.UUID) if self.cursor else None
        return UuidPageRequest(limit=self.limit, after=after)


def next_cursor(ids: Sequence[int | uuid.UUID], limit: int) -> str | None:
    """Given the ids fetched with ``limit + 1``, the cursor of the following page or None."""
    if len(ids) <= limit:
        return None
    last = ids[limit - 1]
    return encode_cursor(str(last) if isinstance(last, uuid.UUID) else last)
