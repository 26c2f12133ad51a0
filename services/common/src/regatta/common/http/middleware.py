"""Pure ASGI middleware (never BaseHTTPMiddleware): request id, body size limit, content type."""

from __future__ import annotations

import itertools
import re
import secrets
from contextvars import ContextVar

from opentelemetry import trace
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from regatta.common.http.problems import problem_response

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_HEADER_BYTES = REQUEST_ID_HEADER.encode()
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class RequestIdMiddleware:
    """Echo a client's sane X-Request-ID or mint one; expose it to logs and the response.

    Minted ids are 32 hex digits: a random prefix per process and a counter, unique across
    replicas without a system call per request.
    """

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
        header = (_REQUEST_ID_HEADER_BYTES, request_id.encode("latin-1"))

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
        if name == _REQUEST_ID_HEADER_BYTES:
            supplied = value.decode("latin-1")
            return supplied if _SANE_REQUEST_ID.fullmatch(supplied) else None
    return None


# How much of a refused body is read and dropped, in multiples of the limit (see _drain).
DRAIN_FACTOR = 4


class _BodyTooLargeError(Exception):
    pass


class BodySizeLimitMiddleware:
    """Answer 413 for bodies over the limit, by Content-Length up front or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: C901 -- one flow, read top to bottom
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is None and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body at all (most GETs): nothing to count
            return
        if declared is not None and not (declared.isdigit() and int(declared) <= self.max_bytes):
            await self._refuse_declared(declared, scope, receive, send)
            return
        received = 0
        started = exceeded = ended = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded, ended
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                ended = not message.get("more_body", False)
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                # The app turned our exception into its own error response (FastAPI answers
                # 400 for any failure while reading a body): answer 413 instead, once.
                if not started:
                    started = True
                    await self._refuse(scope, receive, send, ended=ended)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLargeError:
            if started:
                raise
            await self._refuse(scope, receive, send, ended=ended)

    async def _refuse_declared(
        self, declared: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if not declared.isdigit():
            await problem_response(400, "Content-Length is not a number.")(scope, receive, send)
            return
        # A body beyond what _drain would read is refused at once: waiting for it would let a
        # client hold the connection by declaring gigabytes and sending nothing.
        if int(declared) <= DRAIN_FACTOR * self.max_bytes:
            await self._drain(receive)
        await self._too_large()(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, *, ended: bool) -> None:
        if not ended:  # after the last part, receive() waits for the client to leave
            await self._drain(receive)
        await self._too_large()(scope, receive, send)

    async def _drain(self, receive: Receive) -> None:
        """Read and drop the rest of a refused body, up to a bound, before answering.

        Closing a socket with unread bytes in it makes the kernel reset the connection, and a
        proxy in front (nginx, an ingress) that is still sending then reports a 502 instead of
        our 413. A body a few times over the limit is read to its end; a larger one is cut off.
        """
        remaining = DRAIN_FACTOR * self.max_bytes
        while remaining > 0:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            remaining -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _too_large(self) -> Response:
        return problem_response(
            413,
            f"The request body exceeds the limit of {self.max_bytes} bytes.",
            slug="body-too-large",
            headers={"Connection": "close"},
        )


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


# Deepest nesting of arrays and objects a JSON body may have. Real documents stay far below it;
# far deeper ones exhaust the parser's or the database driver's recursion (a 500 otherwise).
MAX_JSON_DEPTH = 64
_OPENERS = b"[{"
# A JSON string, escapes included: brackets inside one do not nest anything. One left open runs
# to the end of the body (the parser stops there too): were it not matched, the search would
# start again at each later quote and a body of escaped quotes would cost quadratic time.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def json_depth(body: bytes) -> int:
    """How deeply arrays and objects nest in ``body`` (invalid JSON: as far as a parser reads)."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        depth += 1 if byte in _OPENERS else -1
        deepest = max(deepest, depth)
    return deepest


def _charset(content_type: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


class _RefusedBodyError(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class JsonContentTypeMiddleware:
    """Answer 415 when a write's body is not JSON in UTF-8, 422 when it cannot be decoded.

    The body is judged as it arrives, before any route parses it: not UTF-8 (RFC 8259 allows
    no other encoding in an exchange) → 422; nested deeper than ``MAX_JSON_DEPTH`` → 422.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        content_type = headers.get("content-type")
        if content_type is None and not has_body:
            await self.app(scope, receive, send)
            return
        if not _is_json(content_type or "") or _charset(content_type or "") not in _UTF_8:
            response = problem_response(
                415,
                "Request bodies must be JSON in UTF-8, sent with Content-Type: application/json.",
                slug="unsupported-media-type",
                headers={"Accept-Post": "application/json"},
            )
            await response(scope, receive, send)
            return
        await self._checked(scope, receive, send)

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        openers = 0
        refused: Response | None = None
        started = False

        async def checking_receive() -> Message:
            nonlocal openers, refused
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunk: bytes = message.get("body", b"")
            chunks.append(chunk)
            # Counting brackets costs next to nothing and bounds the depth: only a body with
            # more of them than the limit is scanned.
            openers += chunk.count(b"[") + chunk.count(b"{")
            if not message.get("more_body", False):
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                refused = _judge(body, scan=openers > MAX_JSON_DEPTH)
                if refused is not None:
                    raise _RefusedBodyError(refused)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused is not None:
                # The app turned our exception into its own error (FastAPI answers 400 for any
                # failure while reading a body): send ours instead, once.
                if not started:
                    started = True
                    await refused(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, checking_receive, guarded_send)
        except _RefusedBodyError as exc:
            if started:
                raise
            started = True
            await exc.response(scope, receive, send)


_UTF_8 = {None, "utf-8", "utf8"}


def _judge(body: bytes, *, scan: bool) -> Response | None:
    # The refusal of a body that is not UTF-8 or nests too deeply, or None.
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _undecodable(f"The request body is not valid UTF-8 (byte {exc.start}).")
    if scan and json_depth(body) > MAX_JSON_DEPTH:
        return _undecodable(
            f"The request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels."
        )
    return None


def _undecodable(detail: str) -> Response:
    return problem_response(
        422,
        detail,
        slug="undecodable-body",
        title="Invalid request",
        extra={
            "errors": [{"field": "body", "in": "body", "message": detail, "type": "json_invalid"}]
        },
    )
