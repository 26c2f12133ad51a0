"""Fixtures of the notifications suites: receivers, and the platform with fast retries."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from regatta.notifications.settings import NotificationsSettings
from tests.notifications.receiver import Receiver, run_receiver

FAST = {
    "delivery_backoff_base_seconds": 0.05,
    "delivery_backoff_max_seconds": 0.2,
    "worker_poll_seconds": 0.05,
    "webhook_allowed_networks": ["127.0.0.0/8"],
    "webhook_timeout_seconds": 3,
}


@pytest.fixture
def settings(settings: NotificationsSettings) -> NotificationsSettings:
    """The backend's settings with retries fast enough for tests and loopback allowed."""
    return settings.model_copy(update=FAST)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with run_receiver() as running:
        yield running
