"""Reads answered before routing: the platform's hottest paths.

``GET /{resource}/{id}`` is what clients call most, and it needs nothing FastAPI offers — no
dependencies, no body, no response model: :meth:`Resource.read` returns the final bytes and
their ETag, from the cache or else from the database. This pure ASGI layer calls it directly and
answers (200, 304 for a matching ``If-None-Match``, the 404 problem) with exactly what the route
would send. The same goes for an unfiltered list page, ``GET /{resource}`` with at most a
canonical ``limit`` and a well-formed ``cursor``: :meth:`Resource.list` renders it, as the route
does when no filter is given. Everything else — other methods, other paths, other query
parameters, ids, limits or cursors the route would reject or parse differently — goes to the
application unchanged, and the routes stay the documented, equivalent definitions.

It sits inside the request id, metrics, tracing, CORS and rate-limit layers and the error guard,
so these requests are counted, logged, traced, limited and turned into problems (a database
outage → 503) like any other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from regatta.common.cache import CachedResponse
from regatta.common.conditional import CACHE_CONTROL, none_match
from regatta.common.db import Database
from regatta.common.errors import ProblemError, render_problem
from regatta.common.pagination import DEFAULT_LIMIT, MAX_LIMIT, PageRequest, decode_cursor
from regatta.common.resources import JSON_MEDIA_TYPE, Resource
from regatta.common.versioned import MAX_ID

# Canonical decimal ids only (no sign, no leading zero, at most MAX_ID): anything else goes to
# the route, which validates it and answers 404/422 as the contract says.
_ID = re.compile(r"[1-9][0-9]{0,18}")
# A list page's query: a canonical limit and a cursor as encode_cursor writes it, each at most
# once, in either order. Percent-escapes, "+", empty or repeated values go to the route.
_LIMIT = re.compile(rb"limit=([1-9][0-9]{0,2})")
_CURSOR = re.compile(rb"cursor=([A-Za-z0-9_-]{1,200})")
_CACHE_CONTROL = CACHE_CONTROL.encode()


class CachedReadMiddleware:
    """Answer ``GET /{name}/{id}`` of the given resources without routing."""

    def __init__(self, app: ASGIApp, *, resources: Iterable[Resource[Any, Any]]) -> None:
        self.app = app
        self._resources = {resource.name: resource for resource in resources}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a single-resource read or an unfiltered list page, or pass the request on."""
        if scope["type"] == "http" and scope["method"] == "GET":
            state = scope["app"].state
            database: Database | None = getattr(state, "database", None)
            if database is not None and await self._answer(scope, receive, send, database):
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, database: Database) -> bool:
        # True when this layer answered; False leaves the request to the application.
        query: bytes = scope["query_string"]
        if not query:
            found = self._match(scope["path"])
            cache = getattr(scope["app"].state, "cache", None)
            if found is not None and cache is not None:
                resource, row_id = found
                try:
                    entry = await resource.read(database=database, cache=cache, row_id=row_id)
                except ProblemError as exc:  # the 404, as the route's handler renders it
                    await render_problem(exc)(scope, receive, send)
                    return True
                await _send_entry(entry, scope, send)
                return True
        listed = self._resources.get(scope["path"][1:])
        page = _page(query) if listed is not None else None
        if listed is None or page is None:
            return False
        body = await listed.list(database=database, page=page)
        response = Response(body, media_type=JSON_MEDIA_TYPE)
        await response(scope, receive, send)
        return True

    def _match(self, path: str) -> tuple[Resource[Any, Any], int] | None:
        # "/items/42" → (items, 42); None for anything the route should see.
        _, _, rest = path.partition("/")
        name, slash, row_id = rest.partition("/")
        resource = self._resources.get(name)
        if resource is None or not slash or _ID.fullmatch(row_id) is None:
            return None
        number = int(row_id)
        return (resource, number) if number <= MAX_ID else None


def _page(query: bytes) -> PageRequest | None:
    """The page ``limit=&cursor=`` asks for, or None when the route should parse the query."""
    limit = DEFAULT_LIMIT
    after = None
    if query:
        parts = query.split(b"&")
        if len(parts) > 2:  # noqa: PLR2004 -- limit and cursor
            return None
        seen: set[bytes] = set()
        for part in parts:
            name = part.partition(b"=")[0]
            if name in seen:
                return None
            seen.add(name)
            if (matched := _LIMIT.fullmatch(part)) is not None:
                limit = int(matched[1])
                if limit > MAX_LIMIT:
                    return None
            elif (matched := _CURSOR.fullmatch(part)) is not None:
                try:
                    after = decode_cursor(matched[1].decode("ascii"))
                except ProblemError:  # the route answers the 422
                    return None
            else:
                return None
    return PageRequest(limit=limit, after=after)


def _if_none_match(scope: Scope) -> str | None:
    # The first If-None-Match header, as the route's Header() parameter reads it.
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            return bytes(value).decode("latin-1")
    return None


async def _send_entry(entry: CachedResponse, scope: Scope, send: Send) -> None:
    # The same status, headers and body as resources.entry_response() through Starlette.
    etag = entry.etag.encode()
    if none_match(_if_none_match(scope), entry.etag):
        headers = [(b"etag", etag), (b"cache-control", _CACHE_CONTROL)]
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [
        (b"etag", etag),
        (b"cache-control", _CACHE_CONTROL),
        (b"content-length", str(len(entry.body)).encode()),
        (b"content-type", b"application/json"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": entry.body})
