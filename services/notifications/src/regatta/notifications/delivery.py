"""Sending one notification: SMTP (or the console backend) and signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

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

            HTTPXClientInstrumentor.instrument_client(self.http, tracer_provider=tracer_provider)

    async def close(self) -> None:
        """Close pooled connections."""
        await self.http.aclose()

    async def deliver(self, notification: Notification) -> Outcome:
        """One attempt at delivering ``notification``."""
        if notification.channel == "email":
            return await self._email(notification)
        return await self._webhook(notification)

    async def _email(self, notification: Notification) -> Outcome:
        settings = self.settings
        message = EmailMessage()
        message["From"] = settings.smtp_from
        message["To"] = notification.recipient or ""
        message["Subject"] = notification.subject or ""
        message["X-Regatta-Delivery"] = str(notification.id)
        message.set_content(notification.body or "")
        if settings.smtp_host is None:
            logger.info(
                "console e-mail backend — NOT SENT (no SMTP_HOST configured): delivery %s to %s, "
                "subject %r",
                notification.id,
                notification.recipient,
                notification.subject,
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

    async def _webhook(self, notification: Notification) -> Outcome:
        url = notification.url or ""
        body = webhook_body(notification.payload)
        headers = {
            "Content-Type": "application/json",
            "X-Regatta-Delivery": str(notification.id),
            "X-Regatta-Signature": sign(
                self.settings.webhook_signing_secret.get_secret_value(), body
            ),
        }
        if notification.event_type:
            headers["X-Regatta-Event"] = notification.event_type
        origin = urlsplit(url)[:2]
        try:
            for _ in range(MAX_REDIRECTS + 1):
                response = await self.http.post(url, content=body, headers=headers)
                if not response.is_redirect:
                    return _classify(response.status_code)
                target = str(response.next_request.url) if response.next_request else ""
                if urlsplit(target)[:2] != origin:
                    return Outcome(
                        delivered=False,
                        error=f"refused a redirect to another host: {target[:200]}",
                        retryable=False,
                    )
                url = target
            return Outcome(delivered=False, error="too many redirects", retryable=False)
        except BlockedAddressError as exc:
            return Outcome(delivered=False, error=f"blocked: {exc}", retryable=False)
        except httpx.HTTPError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, BlockedAddressError):
                return Outcome(delivered=False, error=f"blocked: {cause}", retryable=False)
            return Outcome(delivered=False, error=f"{type(exc).__name__}: {exc}"[:1000])


def _classify(status: int) -> Outcome:
    if 200 <= status < 300:  # noqa: PLR2004
        return DELIVERED
    retryable = status >= 500 or status in _RETRYABLE_4XX  # noqa: PLR2004
    return Outcome(delivered=False, error=f"HTTP {status}", retryable=retryable)
