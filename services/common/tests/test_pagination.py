"""Cursors are opaque, round-trip, and refuse anything they did not produce."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from regatta.common.http.pagination import PageQuery, decode_cursor, encode_cursor, next_cursor
from regatta.common.http.problems import ProblemError


@pytest.mark.parametrize("after", [0, 1, 42, 2**63 - 1])
def test_round_trip(after: int) -> None:
    assert decode_cursor(encode_cursor(after)) == after


@pytest.mark.parametrize("after", [0, 7, 2**63 - 1, "0190b3a4-7c1e-7000-8000-000000000001"])
def test_cursors_keep_their_spelling(after: int | str) -> None:
    """A cursor a client holds stays valid across releases: the same JSON, base64url, unpadded."""
    document = json.dumps({"v": 1, "after": after}, separators=(",", ":")).encode()
    assert encode_cursor(after) == base64.urlsafe_b64encode(document).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "e30",  # {}
        base64.urlsafe_b64encode(b'{"v":2,"after":1}').decode(),
        base64.urlsafe_b64encode(b'{"v":1,"after":"1"}').decode(),
        base64.urlsafe_b64encode(b'{"v":1,"after":true}').decode(),
        base64.urlsafe_b64encode(b'{"v":1,"after":1.5}').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        "é",
        "A" * 1000,
    ],
)
def test_malformed_cursors_are_422(cursor: str) -> None:
    with pytest.raises(ProblemError) as raised:
        decode_cursor(cursor)
    assert raised.value.status == 422
    assert raised.value.extra["errors"][0]["field"] == "cursor"


def test_next_cursor_only_when_more_rows_exist() -> None:
    assert next_cursor([1, 2, 3], 3) is None
    assert next_cursor([], 3) is None
    cursor = next_cursor([1, 2, 3, 4], 3)
    assert cursor is not None
    assert decode_cursor(cursor) == 3


def test_uuid_cursors_round_trip_and_refuse_other_ids() -> None:
    after = uuid.UUID("0190b3a4-7c1e-7000-8000-000000000001")
    cursor = next_cursor([uuid.UUID(int=1), after, uuid.UUID(int=3)], 2)
    assert cursor is not None
    assert PageQuery(cursor=cursor).uuid_page().after == after
    for malformed in (encode_cursor(7), encode_cursor("not-a-uuid"), "e30"):
        with pytest.raises(ProblemError) as raised:
            PageQuery(cursor=malformed).uuid_page()
        assert raised.value.status == 422
