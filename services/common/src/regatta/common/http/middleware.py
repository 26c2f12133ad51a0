"""Pure ASGI middleware (never BaseHTTPMiddleware): the request id, and judging request bodies."""

from __future__ import annotations

import itertools
import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass, field
from http import HTTPStatus

from opentelemetry import trace
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from regatta.common.http.problems import problem_response

_REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Real documents nest far less; far deeper ones exhaust the parser's or driver's recursion.
MAX_JSON_DEPTH = 64
# A JSON string, whose brackets nest nothing. An unclosed one runs to the end (as the parser
# reads it): unmatched, the search would restart at each quote, in quadratic time.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
DRAIN_FACTOR = 4  # how much of a refused body drain() reads, in multiples of the limit

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class RequestIdMiddleware:
    """Echo a client's sane X-Request-ID or mint one (process prefix + counter); log and send it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _supplied_request_id(scope) or f"{self._prefix}{next(self._counter):016x}"
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("regatta.request_id", request_id)  # find a trace by request id
        header = (_REQUEST_ID_HEADER, request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


def _supplied_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == _REQUEST_ID_HEADER:
            supplied = value.decode("latin-1")
            return supplied if _SANE_REQUEST_ID.fullmatch(supplied) else None
    return None


def _is_utf8_json(content_type: str) -> bool:
    media_type, *parameters = content_type.lower().split(";")
    media_type = media_type.strip()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return False
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "charset":
            return value.strip().strip('"') in {"utf-8", "utf8"}
    return True


def json_depth(body: bytes) -> int:
    """How deeply arrays and objects nest in ``body`` (invalid JSON: as far as a parser reads)."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    steps = (1 if byte in b"[{" else -1 for byte in brackets)
    return max(itertools.accumulate(steps, initial=0))  # the deepest running depth


class _RefusedBodyError(Exception):
    """The body was refused (``_BodyJudge.refused``, whose status it carries): read no further."""


class RequestBodyMiddleware:
    """Judge a request's body as it arrives, before any route parses it: 413, 415 or 422."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        content_type = headers.get("content-type")
        has_body = (declared or "0") != "0" or "transfer-encoding" in headers
        json_write = scope["method"] in _BODY_METHODS and (has_body or content_type is not None)
        if declared is None and not has_body and not json_write:
            await self.app(scope, receive, send)  # no body at all (most GETs): nothing to judge
            return
        refusal = self._refusal_by_headers(declared, content_type, json_write=json_write)
        if refusal is None:
            judge = _BodyJudge(self, scope, receive, send, json_write=json_write)
            try:
                await self.app(scope, judge.receive, judge.send)
            except _RefusedBodyError:
                if judge.started:
                    raise
                await judge.refuse()
            return
        too_large = refusal.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        if too_large and int(declared or 0) <= DRAIN_FACTOR * self.max_bytes:
            await self.drain(receive)
        await refusal(scope, receive, send)

    def _refusal_by_headers(
        self, declared: str | None, content_type: str | None, *, json_write: bool
    ) -> Response | None:
        # Refused at once: no client holds a connection by declaring gigabytes and sending nothing.
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            return problem_response(400, "Content-Length is not a number.")
        if declared is not None and int(declared) > self.max_bytes:
            return self.too_large()
        if json_write and not _is_utf8_json(content_type or ""):
            return problem_response(
                415,
                "Request bodies must be JSON in UTF-8, sent with Content-Type: application/json.",
                slug="unsupported-media-type",
                headers={"Accept-Post": "application/json"},
            )
        return None

    async def drain(self, receive: Receive) -> None:
        """Read and drop a refused body, up to a bound: unread bytes make a proxy answer 502."""
        remaining = DRAIN_FACTOR * self.max_bytes
        while remaining > 0:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            remaining -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def too_large(self) -> Response:
        """The 413 for a body over the limit."""
        return problem_response(
            413,
            f"The request body exceeds the limit of {self.max_bytes} bytes.",
            slug="body-too-large",
            headers={"Connection": "close"},
        )


@dataclass(eq=False, slots=True)
class _BodyJudge:
    """One request's body as the app receives it: counted, and judged when it ends."""

    middleware: RequestBodyMiddleware
    scope: Scope
    _receive: Receive
    _send: Send
    json_write: bool
    chunks: list[bytes] = field(default_factory=list)
    received: int = 0
    openers: int = 0
    refused: Response | None = None
    started: bool = False
    ended: bool = False

    async def receive(self) -> Message:
        """The next part of the body; raises once the body is refused."""
        message = await self._receive()
        if message["type"] != "http.request":
            return message
        chunk: bytes = message.get("body", b"")
        self.received += len(chunk)
        self.ended = not message.get("more_body", False)
        if self.received > self.middleware.max_bytes:
            self.refused = self.middleware.too_large()
        elif self.json_write:
            self.chunks.append(chunk)
            # Counting brackets is nearly free: only a body with more than the limit is scanned.
            self.openers += chunk.count(b"[") + chunk.count(b"{")
            if self.ended:
                body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
                self.refused = _judge(body, scan=self.openers > MAX_JSON_DEPTH)
        if self.refused is not None:
            raise _RefusedBodyError(self.refused.status_code)
        return message

    async def send(self, message: Message) -> None:
        """Pass the app's response on, unless the body was refused: then send the refusal."""
        if self.refused is not None:
            if not self.started:  # the app answered the failed read with an error of its own
                await self.refuse()
            return
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)

    async def refuse(self) -> None:
        """Send the refusal, once the rest of the body is read (up to a bound)."""
        self.started = True
        if not self.ended:  # after the last part, receive() waits for the client to leave
            await self.middleware.drain(self._receive)
        if self.refused is not None:
            await self.refused(self.scope, self._receive, self._send)


def _judge(body: bytes, *, scan: bool) -> Response | None:
    # The refusal of a body that is not UTF-8 or nests too deeply, or None.
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        detail = f"The request body is not valid UTF-8 (byte {exc.start})."
    else:
        if not scan or json_depth(body) <= MAX_JSON_DEPTH:
            return None
        detail = f"The request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels."
    error = {"field": "body", "in": "body", "message": detail, "type": "json_invalid"}
    return problem_response(
        422, detail, slug="undecodable-body", title="Invalid request", extra={"errors": [error]}
    )
