"""Sending one notification: SMTP (or the console backend) and signed webhooks.

An attempt is bounded whatever the receiver does: one deadline covers it whole (connect, send,
and the reply), and at most ``MAX_RESPONSE_BYTES`` of a webhook's reply are read (its status
is all the worker needs), so a receiver that streams gigabytes or drips a byte at a time costs
one connection for at most the deadline, never the worker's memory.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiosmtplib
import httpcore
import httpx
from opentelemetry.trace import TracerProvider

from regatta.notifications.models import Notification
from regatta.notifications.settings import NotificationsSettings
from regatta.notifications.ssrf import AddressPolicy, BlockedAddressError, GuardedBackend

logger = logging.getLogger("regatta.notifications.delivery")

USER_AGENT = "Regatta-Webhooks/0.1"
MAX_REDIRECTS = 3
# How much of a webhook's reply is read (then the connection is dropped): enough for any
# status page, and the reason small replies keep their connection alive for the next delivery.
MAX_RESPONSE_BYTES = 4096
# How long that little may take (within the attempt's deadline): the status is already known.
RESPONSE_READ_SECONDS = 1.0
_RETRYABLE_4XX = {408, 425, 429}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt achieved: delivered, or an error and whether trying again may help."""

    delivered: bool
    error: str | None = None
    retryable: bool = True


DELIVERED = Outcome(delivered=True)


def sign(secret: str, body: bytes) -> str:
    """The ``X-Regatta-Signature`` value: ``sha256=<hex HMAC of the body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature``: ``v1,<base64 HMAC-SHA256>``.

    The HMAC covers ``id.timestamp.body``, so a captured delivery cannot be replayed later with a
    fresh timestamp; the key is the UTF-8 bytes of the signing secret (the standard libraries
    take it as ``"whsec_" + base64(secret)``).
    """
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def redact_url(url: str) -> str:
    """``url`` without userinfo, query or fragment: what may be logged or traced."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _RedactUrls(logging.Filter):
    """httpx logs every request's full URL at INFO: a webhook URL's query may hold a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(str(arg)) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


logging.getLogger("httpx").addFilter(_RedactUrls())


async def _redact_span(span: Any, request: Any) -> None:
    # The httpx instrumentation records the full URL (and an AsyncClient calls only async
    # hooks): keep it without query and userinfo.
    if span is None or not span.is_recording():
        return
    redacted = redact_url(str(request.url))
    for attribute in ("http.url", "url.full"):
        span.set_attribute(attribute, redacted)


def mask_address(address: str) -> str:
    """``g***@example.com``: enough to tell messages apart in a log, not enough to be personal."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def webhook_body(payload: Any) -> bytes:
    """The exact bytes sent (and signed)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class Deliverer:
    """Holds the HTTP client and SMTP settings; delivers one notification per call."""

    def __init__(
        self, settings: NotificationsSettings, *, tracer_provider: TracerProvider | None = None
    ) -> None:
        self.settings = settings
        self.policy = AddressPolicy(settings.allowed_networks)
        transport = httpx.AsyncHTTPTransport(retries=0)
        # Route every connection through the address check (httpx has no public hook for the
        # network backend; the pool attribute is stable across httpx 0.2x).
        transport._pool = httpcore.AsyncConnectionPool(  # noqa: SLF001
            ssl_context=ssl.create_default_context(),
            network_backend=GuardedBackend(self.policy),
            max_connections=100,
        )
        self.http = httpx.AsyncClient(
            transport=transport,
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
            trust_env=False,  # a proxy would be the only address we check
            headers={"User-Agent": USER_AGENT},
        )
        if tracer_provider is not None:
            # A client span per webhook request, and a traceparent header the receiver may use.
            from opentelemetry.instrumentation.httpx import (  # noqa: PLC0415 -- only when tracing
                HTTPXClientInstrumentor,
            )

            HTTPXClientInstrumentor.instrument_client(
                self.http, tracer_provider=tracer_provider, request_hook=_redact_span
            )

    async def close(self) -> None:
        """Close pooled connections."""
        await self.http.aclose()

    async def deliver(self, notification: Notification) -> Outcome:
        """One attempt at delivering ``notification``, over within its deadline."""
        if notification.channel == "email":
            seconds = self.settings.smtp_timeout_seconds
            try:
                async with asyncio.timeout(seconds):
                    return await self._email(notification)
            except TimeoutError:
                return _deadline_exceeded(seconds)
        seconds = self.settings.webhook_timeout_seconds
        return await self._webhook(notification, asyncio.get_running_loop().time() + seconds)

    async def _email(self, notification: Notification) -> Outcome:
        settings = self.settings
        message = EmailMessage()
        message["From"] = settings.smtp_from
        message["To"] = notification.recipient or ""
        message["Subject"] = notification.subject or ""
        message["X-Regatta-Delivery"] = str(notification.id)
        message.set_content(notification.body or "")
        if settings.smtp_host is None:
            # Addresses and subjects are personal (a subject may hold a one-time code): masked.
            logger.info(
                "console e-mail backend — NOT SENT (no SMTP_HOST configured): delivery %s to %s, "
                "subject of %d characters",
                notification.id,
                mask_address(notification.recipient or ""),
                len(notification.subject or ""),
            )
            return DELIVERED
        try:
            await aiosmtplib.send(
                message,
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username,
                password=settings.smtp_password.get_secret_value()
                if settings.smtp_password
                else None,
                use_tls=settings.smtp_tls == "tls",
                start_tls=settings.smtp_tls == "starttls",
                timeout=settings.smtp_timeout_seconds,
            )
        except aiosmtplib.SMTPResponseException as exc:
            # 5xx is permanent (bad mailbox, refused); 4xx is "try again later".
            return Outcome(
                delivered=False,
                error=f"SMTP {exc.code}: {exc.message}"[:1000],
                retryable=exc.code < 500,  # noqa: PLR2004
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return Outcome(delivered=False, error=f"SMTP: {type(exc).__name__}: {exc}"[:1000])
        return DELIVERED

    async def _webhook(self, notification: Notification, deadline: float) -> Outcome:
        url = notification.url or ""
        body = webhook_body(notification.payload)
        secret = self.settings.webhook_signing_secret.get_secret_value()
        message_id = str(notification.id)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "X-Regatta-Delivery": message_id,
            "X-Regatta-Signature": sign(secret, body),
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": standard_signature(secret, message_id, timestamp, body),
        }
        if notification.event_type:
            headers["X-Regatta-Event"] = notification.event_type
        origin = urlsplit(url)[:2]
        try:
            for _ in range(MAX_REDIRECTS + 1):
                request = self.http.build_request("POST", url, content=body, headers=headers)
                async with asyncio.timeout_at(deadline):
                    response = await self.http.send(request, stream=True)
                try:
                    if not response.is_redirect:
                        await _read_some(response, deadline)
                        return _classify(response.status_code)
                    target = str(response.next_request.url) if response.next_request else ""
                finally:
                    await response.aclose()
                if urlsplit(target)[:2] != origin:
                    return Outcome(
                        delivered=False,
                        error=f"refused a redirect to another host: {redact_url(target)[:200]}",
                        retryable=False,
                    )
                url = target
            return Outcome(delivered=False, error="too many redirects", retryable=False)
        except TimeoutError:
            return _deadline_exceeded(self.settings.webhook_timeout_seconds)
        except (BlockedAddressError, httpx.HTTPError) as exc:
            return _failed_request(exc)


def _failed_request(exc: BlockedAddressError | httpx.HTTPError) -> Outcome:
    cause = exc if isinstance(exc, BlockedAddressError) else exc.__cause__ or exc.__context__
    if isinstance(cause, BlockedAddressError):
        return Outcome(delivered=False, error=f"blocked: {cause}", retryable=False)
    return Outcome(delivered=False, error=f"{type(exc).__name__}: {exc}"[:1000])


async def _read_some(response: httpx.Response, deadline: float) -> None:
    # The status has arrived and decides the outcome; read a little of the body, within the
    # attempt's deadline, only so a well-behaved receiver's connection can be used again.
    length = response.headers.get("content-length", "")
    if not (length.isascii() and length.isdigit()) or int(length) > MAX_RESPONSE_BYTES:
        return  # unknown or large: dropping the connection is cheaper than reading it
    read = 0
    until = min(deadline, asyncio.get_running_loop().time() + RESPONSE_READ_SECONDS)
    try:
        async with asyncio.timeout_at(until):
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read > MAX_RESPONSE_BYTES:
                    return
    except (TimeoutError, httpx.HTTPError):
        return


def _deadline_exceeded(seconds: float) -> Outcome:
    return Outcome(delivered=False, error=f"the attempt's deadline of {seconds:g} s passed")


def _classify(status: int) -> Outcome:
    if 200 <= status < 300:  # noqa: PLR2004
        return DELIVERED
    retryable = status >= 500 or status in _RETRYABLE_4XX  # noqa: PLR2004
    return Outcome(delivered=False, error=f"HTTP {status}", retryable=retryable)
