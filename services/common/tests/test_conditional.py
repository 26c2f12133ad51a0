"""ETag comparison follows RFC 9110: weak for If-None-Match, strong for If-Match."""

from __future__ import annotations

import pytest

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
    star = parse_if_match("*")
    assert star is not None
    assert star.admits(1)
    assert star.admits(99)
    listed = parse_if_match('"2", "5"')
    assert listed is not None
    assert listed.admits(2)
    assert listed.admits(5)
    assert not listed.admits(3)
    for foreign in ('W/"2"', "2", '"abc"', '"99999999999999999999999"', ""):
        parsed = parse_if_match(foreign)
        assert parsed is not None
        assert not parsed.admits(2)
