"""ETags from integer versions, If-None-Match (304) and If-Match (412) evaluation."""

from __future__ import annotations

from typing import Any

from regatta.common.data.repository import Precondition
from regatta.common.http.problems import ProblemError

# Revalidate every time (a write shows on the next read): the ETag makes it a bodiless 304.
CACHE_CONTROL = "no-cache"

# The OpenAPI ``responses`` entry of a GET that honours If-None-Match.
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not Modified: If-None-Match names the current ETag (no body)."}
}


def make_etag(version: int) -> str:
    """The strong ETag of a resource at ``version``."""
    return f'"{version}"'


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def none_match(if_none_match: str | None, etag: str) -> bool:
    """True when If-None-Match names the current tag (weak comparison), so 304 applies."""
    if not if_none_match:
        return False
    opaque = etag.removeprefix("W/")
    return any(tag == "*" or tag.removeprefix("W/") == opaque for tag in _tags(if_none_match))


def parse_if_match(if_match: str | None) -> Precondition | None:
    """Parse If-Match with strong comparison; tags that are not ours can never match."""
    if if_match is None:
        return None
    tags = _tags(if_match)
    if "*" in tags:
        return Precondition(any_version=True, versions=frozenset())
    versions = set()
    for tag in tags:
        inner = tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else ""  # noqa: PLR2004
        if inner.isascii() and inner.isdigit() and len(inner) <= 18:  # noqa: PLR2004 -- BIGINT
            versions.add(int(inner))
    return Precondition(any_version=False, versions=frozenset(versions))


def precondition_failed(current_version: int) -> ProblemError:
    """The 412 for a write whose If-Match names another version."""
    return ProblemError(
        412,
        "The resource has changed since you read it: fetch it again and retry with its ETag.",
        slug="precondition-failed",
        headers={"ETag": make_etag(current_version)},
        extra={"current_version": current_version},
    )


# Read from the headers, not as Header parameters (17 µs a request each): documented thus.
def _documented(header: str, description: str) -> dict[str, Any]:
    parameter = {"name": header, "in": "header", "required": False, "schema": {"type": "string"}}
    return {"parameters": [{**parameter, "description": description}]}


IF_MATCH_DOCUMENTED = _documented("If-Match", "Write only if the ETag still matches.")
IF_NONE_MATCH_DOCUMENTED = _documented("If-None-Match", "Answer 304 if the ETag is unchanged.")
