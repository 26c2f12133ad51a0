"""Keyset pagination with opaque cursors: ``?limit=&cursor=`` → ``{"data", "next_cursor"}``."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

from regatta.common.errors import invalid_field

T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_CURSOR_VERSION = 1
_MAX_CURSOR_LENGTH = 200


class Page(BaseModel, Generic[T]):
    """One page of a list, ordered by id ascending."""

    data: list[T]
    next_cursor: str | None


def encode_cursor(after_id: int) -> str:
    """An opaque token meaning "the rows after this id"."""
    raw = json.dumps({"v": _CURSOR_VERSION, "after": after_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _parse_cursor(cursor: str) -> int | None:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        after = payload["after"]
        valid = payload.get("v") == _CURSOR_VERSION and type(after) is int and after >= 0
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeError):
        return None
    return after if valid else None


def decode_cursor(cursor: str) -> int:
    """The id a cursor points after; a malformed cursor is the client's mistake (422)."""
    after = _parse_cursor(cursor) if len(cursor) <= _MAX_CURSOR_LENGTH else None
    if after is None:
        raise invalid_field(
            "cursor", "query", "malformed cursor: pass back a next_cursor unchanged", kind="cursor"
        )
    return after


class PageRequest(BaseModel):
    """The parsed ``limit`` and ``cursor`` of a list request."""

    limit: int
    after: int | None


def page_request(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Query(description="The next_cursor of the previous page.")
    ] = None,
) -> PageRequest:
    """Parse paging parameters (dependency)."""
    return PageRequest(limit=limit, after=decode_cursor(cursor) if cursor else None)


PageDep = Annotated[PageRequest, Depends(page_request)]


def next_cursor(ids: Sequence[int], limit: int) -> str | None:
    """Given the ids fetched with ``limit + 1``, the cursor of the following page or None."""
    if len(ids) <= limit:
        return None
    return encode_cursor(ids[limit - 1])
