"""Nothing secret in logs or spans: webhook URLs lose query and userinfo, recipients are masked."""

from __future__ import annotations

import logging
import uuid

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from regatta.common.settings import Environment
from regatta.notifications.delivery import Deliverer, redact_url
from regatta.notifications.models import Notification
from regatta.notifications.settings import NotificationsSettings
from tests.notifications.receiver import run_receiver

SETTINGS = NotificationsSettings(
    environment=Environment.TEST,
    database_url="sqlite+aiosqlite:///unused.db",
    webhook_allowed_networks=["127.0.0.0/8"],
    webhook_timeout_seconds=3,
)


async def test_webhook_urls_are_logged_and_traced_without_their_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    deliverer = Deliverer(SETTINGS, tracer_provider=provider)
    caplog.set_level(logging.DEBUG)
    try:
        async with run_receiver() as receiver:
            url = f"http://hook-user:pa55word@127.0.0.1:{receiver.port}/hook?token=t0ken-s3cret"
            notification = Notification(
                id=uuid.uuid4(), channel="webhook", url=url, payload={"n": 1}, attempts=1
            )
            outcome = await deliverer.deliver(notification)
    finally:
        await deliverer.close()
    assert outcome.delivered, outcome.error
    assert receiver.requests, "the receiver got nothing"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"127.0.0.1:{receiver.port}/hook" in logged  # httpx's request line is still there
    spans = exporter.get_finished_spans()
    assert spans
    traced = repr([dict(span.attributes or {}) for span in spans])
    assert f"127.0.0.1:{receiver.port}/hook" in traced
    for secret in ("t0ken-s3cret", "pa55word", "hook-user"):
        assert secret not in logged
        assert secret not in traced


async def test_the_console_backend_masks_recipients_and_subjects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    deliverer = Deliverer(SETTINGS)
    caplog.set_level(logging.INFO)
    try:
        notification = Notification(
            id=uuid.uuid4(),
            channel="email",
            recipient="grace.hopper@example.com",
            subject="Your password reset code 123456",
            body="123456",
            attempts=1,
        )
        outcome = await deliverer.deliver(notification)
    finally:
        await deliverer.close()
    assert outcome.delivered
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "NOT SENT" in logged
    assert "g***@example.com" in logged
    assert "grace.hopper" not in logged
    assert "123456" not in logged


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@example.com/h?token=x#f", "https://example.com/h"),
        ("http://example.com:8080/a/b?x=1", "http://example.com:8080/a/b"),
        ("http://[2001:db8::1]:9/h?k=v", "http://[2001:db8::1]:9/h"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
