"""Single-resource reads answered before routing: the platform's hottest path.

``GET /{resource}/{id}`` is what clients call most, and it needs nothing FastAPI offers — no
dependencies, no body, no response model: :meth:`Resource.read` returns the final bytes and
their ETag, from the cache or else from the database. This pure ASGI layer calls it directly and
answers (200, 304 for a matching ``If-None-Match``, the 404 problem) with exactly what the route
would send; everything else — other methods, other paths, query strings, ids the route would
reject — goes to the application unchanged, and the route stays the documented, equivalent
definition.

It sits inside the request id, metrics, tracing, CORS and rate-limit layers and the error guard,
so these requests are counted, logged, traced, limited and turned into problems (a database
outage → 503) like any other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from regatta.common.cache import CachedResponse
from regatta.common.conditional import CACHE_CONTROL, none_match
from regatta.common.errors import ProblemError, render_problem
from regatta.common.resources import Resource
from regatta.common.versioned import MAX_ID

# Canonical decimal ids only (no sign, no leading zero, at most MAX_ID): anything else goes to
# the route, which validates it and answers 404/422 as the contract says.
_ID = re.compile(r"[1-9][0-9]{0,18}")
_CACHE_CONTROL = CACHE_CONTROL.encode()


class CachedReadMiddleware:
    """Answer ``GET /{name}/{id}`` of the given resources without routing."""

    def __init__(self, app: ASGIApp, *, resources: Iterable[Resource[Any, Any]]) -> None:
        self.app = app
        self._resources = {resource.name: resource for resource in resources}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a single-resource read, or pass the request on."""
        # With a query string the route decides (unknown parameters are refused there).
        if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]:
            found = self._match(scope["path"])
            state = scope["app"].state
            database = getattr(state, "database", None)
            cache = getattr(state, "cache", None)
            if found is not None and database is not None and cache is not None:
                resource, row_id = found
                try:
                    entry = await resource.read(database=database, cache=cache, row_id=row_id)
                except ProblemError as exc:  # the 404, as the route's handler renders it
                    await render_problem(exc)(scope, receive, send)
                    return
                await _send_entry(entry, scope, send)
                return
        await self.app(scope, receive, send)

    def _match(self, path: str) -> tuple[Resource[Any, Any], int] | None:
        # "/items/42" → (items, 42); None for anything the route should see.
        _, _, rest = path.partition("/")
        name, slash, row_id = rest.partition("/")
        resource = self._resources.get(name)
        if resource is None or not slash or _ID.fullmatch(row_id) is None:
            return None
        number = int(row_id)
        return (resource, number) if number <= MAX_ID else None


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
