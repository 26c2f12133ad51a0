"""The response cache in front of the routes: ``GET /{resource}/{id}`` answered from final bytes."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from regatta.common.http.conditional import CACHE_CONTROL, none_match
from regatta.common.http.resource_routes import read_route_name
from regatta.common.http.resources import Resource
from regatta.common.redis.cache import CachedResponse, ResponseCache

# Canonical decimal ids (no sign or leading zero, 19 digits at most): others are the route's.
_ID = re.compile(r"[1-9][0-9]{0,18}")
_CACHE_CONTROL = CACHE_CONTROL.encode()


class CachedReads:
    """Answer cache hits of ``GET /{resource}/{id}`` for the declared resources."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        resources: Iterable[Resource[Any, Any]],
        routes: Iterable[BaseRoute],
        cache: Callable[[], ResponseCache | None],
        count: Callable[[str, bool], None],
    ) -> None:
        self.app = app
        self._resources = {resource.name: resource for resource in resources}
        # The route each resource's hits answer for, as the router would have matched it.
        named = {getattr(route, "name", None): route for route in routes}
        self._routes = {
            resource.name: named[read_route_name(resource)] for resource in self._resources.values()
        }
        self._cache = cache  # None until the lifespan has opened it: the route answers
        self._count = count  # each look-up's key, and whether it hit (metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the cached response, or pass the request on."""
        if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]:
            # "/items/42": items declared, 42 a canonical id.
            _, _, rest = scope["path"].partition("/")
            name, slash, row_id = rest.partition("/")
            resource = self._resources.get(name)
            cache = self._cache()
            if resource is not None and slash and _ID.fullmatch(row_id) and cache is not None:
                key = resource.cache_key(int(row_id))
                entry = await cache.get(key)
                self._count(key, entry is not None)
                if entry is not None:
                    scope["route"] = self._routes[name]
                    await _send(entry, scope, send)
                    return
        await self.app(scope, receive, send)


async def _send(entry: CachedResponse, scope: Scope, send: Send) -> None:
    # Byte for byte what resources.entry_response() gives through Starlette (test_read_cache.py).
    if none_match(Headers(scope=scope).get("if-none-match"), entry.etag):  # as the route reads it
        status, body = 304, b""
        headers = [(b"etag", entry.etag.encode()), (b"cache-control", _CACHE_CONTROL)]
    else:
        status, body = 200, entry.body
        headers = [
            (b"etag", entry.etag.encode()),
            (b"cache-control", _CACHE_CONTROL),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
