"""Pure ASGI middleware (never BaseHTTPMiddleware): request id, body size limit, content type."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from opentelemetry import trace
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from regatta.common.errors import problem_response

REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class RequestIdMiddleware:
    """Echo a client's sane X-Request-ID or mint one; expose it to logs and the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = Headers(scope=scope).get(REQUEST_ID_HEADER)
        request_id = supplied if supplied and _SANE_REQUEST_ID.match(supplied) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("regatta.request_id", request_id)  # find a trace by request id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


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
        refusal = self._check_declared_length(Headers(scope=scope).get("content-length"))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        received = 0
        started = exceeded = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
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
                    await self._send_too_large(send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLargeError:
            if started:
                raise
            await self._send_too_large(send)

    def _check_declared_length(self, declared: str | None) -> Response | None:
        if declared is None:
            return None
        if not declared.isdigit():
            return problem_response(400, "Content-Length is not a number.")
        if int(declared) > self.max_bytes:
            return self._too_large()
        return None

    async def _send_too_large(self, send: Send) -> None:
        response = self._too_large()
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})

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


class JsonContentTypeMiddleware:
    """Answer 415 when a write carries a body that does not say it is JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] == "http" and scope["method"] in _BODY_METHODS:
            headers = Headers(scope=scope)
            has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
            content_type = headers.get("content-type")
            if (content_type is not None or has_body) and not _is_json(content_type or ""):
                response = problem_response(
                    415,
                    "Request bodies must be JSON, sent with Content-Type: application/json.",
                    slug="unsupported-media-type",
                    headers={"Accept-Post": "application/json"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
