"""Requests answered before routing: the platform's hottest paths.

``GET /{resource}/{id}`` is what clients call most, and it needs nothing FastAPI offers — no
dependencies, no body, no response model: :meth:`Resource.read` returns the final bytes and
their ETag, from the cache or else from the database. This pure ASGI layer calls it directly and
answers (200, 304 for a matching ``If-None-Match``, the 404 problem) with exactly what the route
would send. The same goes for an unfiltered list page, ``GET /{resource}`` with at most a
canonical ``limit`` and a well-formed ``cursor``: :meth:`Resource.list` renders it, as the route
does when no filter is given.

``POST /{resource}`` is the other call that matters, and FastAPI's dependency solving was a
fifth of its cost. A create that the route would accept — no query, ``Content-Type:
application/json``, a body the create schema validates, a writer's key, at most one well-formed
``Idempotency-Key`` — is validated and passed to the service's own create function here, with
the same arguments the route passes. Anything else (every request the route would refuse, in
whichever order it checks) goes to the route with its body replayed, so errors come from one
place only.

Everything else — other methods, other paths, other query parameters, ids, limits or cursors the
route would reject or parse differently — goes to the application unchanged, and the routes
stay the documented, equivalent definitions (``tests/contract/test_hotpath.py`` compares them).

It sits inside the request id, metrics, tracing, CORS, rate-limit and body-size layers and the
error guard, so these requests are counted, logged, traced, limited and turned into problems (a
database outage → 503) like any other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from regatta.common.data.db import Database
from regatta.common.data.idempotency import (
    IDEMPOTENCY_KEY_MAX_LENGTH,
    IDEMPOTENCY_KEY_PATTERN,
    StoredResponse,
)
from regatta.common.data.repository import MAX_ID
from regatta.common.http.auth import require_writer
from regatta.common.http.conditional import CACHE_CONTROL, none_match
from regatta.common.http.pagination import DEFAULT_LIMIT, MAX_LIMIT, PageRequest, decode_cursor
from regatta.common.http.problems import ProblemError, render_problem
from regatta.common.http.resources import JSON_MEDIA_TYPE, Resource, stored_response
from regatta.common.redis.cache import CachedResponse

# Canonical decimal ids only (no sign, no leading zero, at most MAX_ID): anything else goes to
# the route, which validates it and answers 404/422 as the contract says.
_ID = re.compile(r"[1-9][0-9]{0,18}")
# A list page's query: a canonical limit and a cursor as encode_cursor writes it, each at most
# once, in either order. Percent-escapes, "+", empty or repeated values go to the route.
_LIMIT = re.compile(rb"limit=([1-9][0-9]{0,2})")
_CURSOR = re.compile(rb"cursor=([A-Za-z0-9_-]{1,200})")
_CACHE_CONTROL = CACHE_CONTROL.encode()
_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN.removeprefix("^").removesuffix("$"))


@dataclass(frozen=True, slots=True)
class HotCreate:
    """``POST /{name}`` as its route runs it: the body's schema and the service's create call.

    ``create`` takes the keyword arguments the route passes it — ``request``, ``database``,
    ``cache``, ``store``, ``idempotency_key``, ``principal`` — and the validated body under
    ``body_argument``.
    """

    name: str
    schema: type[BaseModel]
    create: Callable[..., Awaitable[StoredResponse]]
    body_argument: str


class HotPathMiddleware:
    """Answer reads of the given resources, and valid creates, without routing."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        resources: Iterable[Resource[Any, Any]],
        creates: Iterable[HotCreate] = (),
    ) -> None:
        self.app = app
        self._resources = {resource.name: resource for resource in resources}
        self._creates = {f"/{create.name}": create for create in creates}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a read, a list page or a create, or pass the request on."""
        if scope["type"] == "http":
            database: Database | None = getattr(scope["app"].state, "database", None)
            method = scope["method"]
            if database is None:
                pass  # the lifespan has not opened it yet: the routes answer
            elif method == "GET":
                if await self._answer(scope, receive, send, database):
                    return
            elif method == "POST" and not scope["query_string"]:
                create = self._creates.get(scope["path"])
                if create is not None:
                    await self._create(create, scope, receive, send, database)
                    return
        await self.app(scope, receive, send)

    async def _create(
        self, create: HotCreate, scope: Scope, receive: Receive, send: Send, database: Database
    ) -> None:
        # Read the body; then either run the create as the route would, or hand the request
        # (and the messages already read) to the route.
        taken, key = _json_create_key(scope)
        if not taken:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        chunks: list[bytes] = []
        try:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except Exception as exc:  # noqa: BLE001 -- e.g. a body over the limit
            # The route meets the same failure where it reads the body, and answers as it did.
            await self.app(scope, _replaying(messages, receive, failure=exc), send)
            return
        complete = messages[-1]["type"] == "http.request"  # not a disconnect
        body = b"".join(chunks)
        accepted = (
            await self._accepted(create, scope, receive, body, key=key, database=database)
            if complete
            else None
        )
        if accepted is None:
            await self.app(scope, _replaying(messages, receive), send)
            return
        request, arguments = accepted
        try:
            stored = await create.create(request=request, **arguments)
        except ProblemError as exc:  # a conflict or a mismatch, as the route's handler renders it
            await render_problem(exc)(scope, receive, send)
            return
        await stored_response(stored)(scope, receive, send)

    async def _accepted(
        self,
        create: HotCreate,
        scope: Scope,
        receive: Receive,
        body: bytes,
        *,
        key: str | None,
        database: Database,
    ) -> tuple[Request, dict[str, Any]] | None:
        # The create's arguments when the route would accept the request, else None.
        try:
            model = create.schema.model_validate(json.loads(body))
        except Exception:  # noqa: BLE001 -- the route answers (422, or 400 for what json cannot parse)
            return None
        request = Request(scope, receive)
        try:
            principal = await require_writer(request)
        except ProblemError:  # the 401 or 403
            return None
        state = scope["app"].state
        cache = getattr(state, "cache", None)
        if cache is None:
            return None
        return request, {
            "database": database,
            "cache": cache,
            "store": state.idempotency[create.name],
            "idempotency_key": key,
            "principal": principal,
            create.body_argument: model,
        }

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


def _json_create_key(scope: Scope) -> tuple[bool, str | None]:
    """Whether a create's headers are ones the hot path takes, and its Idempotency-Key.

    Taken: exactly one ``Content-Type: application/json`` and at most one Idempotency-Key, of
    the length and characters the route's header parameter allows.
    """
    content_type = None
    keys: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"content-type":
            if content_type is not None:
                return False, None
            content_type = value
        elif name == b"idempotency-key":
            keys.append(value)
    if content_type != b"application/json" or len(keys) > 1:
        return False, None
    if not keys:
        return True, None
    key = bytes(keys[0]).decode("latin-1")
    return len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH and _KEY.fullmatch(key) is not None, key


def _replaying(
    messages: list[Message], receive: Receive, *, failure: Exception | None = None
) -> Receive:
    """``receive`` that gives ``messages`` again first (then raises ``failure``, if any)."""
    pending = list(messages)

    async def replay() -> Message:
        nonlocal failure
        if pending:
            return pending.pop(0)
        if failure is not None:
            raised, failure = failure, None
            raise raised
        return await receive()

    return replay
