"""ETag comparison follows RFC 9110: weak for If-None-Match, strong for If-Match."""

from __future__ import annotations

import pytest

from regatta.common.data.repository import Precondition
from regatta.common.http.conditional import make_etag, none_match, parse_if_match


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        ('"3"', True),
        ('W/"3"', True),
        ('"1", "3"', True),
        ("*", True),
        ('"4"', False),
        ("3", False),
    ],
)
def test_if_none_match(header: str | None, expected: bool) -> None:
    assert none_match(header, make_etag(3)) is expected


def test_if_match_parsing() -> None:
    assert parse_if_match(None) is None
    assert parse_if_match("*") == Precondition(any_version=True, versions=frozenset())
    assert parse_if_match('"2", "5"') == Precondition(any_version=False, versions=frozenset({2, 5}))
    for foreign in ('W/"2"', "2", '"abc"', '"99999999999999999999999"', ""):
        # Tags that are not ours can never match.
        assert parse_if_match(foreign) == Precondition(any_version=False, versions=frozenset())
