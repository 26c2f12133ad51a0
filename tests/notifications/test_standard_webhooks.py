"""Standard Webhooks: a real delivery verifies with the published library, and a replay does not."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta, tzinfo

import httpx
import pytest
import standardwebhooks.webhooks
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.eventually import eventually
from tests.notifications.receiver import Received, Receiver

# The key is the secret's UTF-8 bytes; the libraries take it base64-encoded after "whsec_".
SECRET = "whsec_" + base64.b64encode(b"regatta-development-signing-secret").decode()


async def one_delivery(client: httpx.AsyncClient, receiver: Receiver) -> Received:
    accepted = await client.post(
        "/notifications",
        json={"channel": "webhook", "url": receiver.url(), "payload": {"order": 42, "é": "ü"}},
    )
    assert accepted.status_code == 202

    async def arrived() -> bool:
        return bool(receiver.requests)

    await eventually(arrived)
    request = receiver.requests[0]
    assert request.headers["webhook-id"] == accepted.json()["id"]
    assert request.headers["x-regatta-delivery"] == accepted.json()["id"]  # kept as well
    return request


async def test_a_real_delivery_verifies_with_the_standard_library(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    request = await one_delivery(client, receiver)
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 300
    assert request.headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(request.body, request.headers) == {"order": 42, "é": "ü"}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(request.body + b" ", request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another secret").decode()).verify(
            request.body, request.headers
        )


async def test_a_replayed_delivery_is_rejected(
    client: httpx.AsyncClient, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = await one_delivery(client, receiver)

    class SixMinutesLater(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> SixMinutesLater:
            moment = datetime.now(tz or UTC) + timedelta(minutes=6)
            return cls.fromtimestamp(moment.timestamp(), tz=tz or UTC)

    # Captured and sent again six minutes later: too old.
    with monkeypatch.context() as later:
        later.setattr(standardwebhooks.webhooks, "datetime", SixMinutesLater)
        with pytest.raises(WebhookVerificationError, match="too old"):
            Webhook(SECRET).verify(request.body, request.headers)
    # ... and a fresh timestamp breaks the signature, which covers it.
    refreshed = {**request.headers, "webhook-timestamp": str(int(time.time()))}
    if refreshed["webhook-timestamp"] == request.headers["webhook-timestamp"]:
        refreshed["webhook-timestamp"] = str(int(time.time()) + 1)
    with pytest.raises(WebhookVerificationError, match="signature"):
        Webhook(SECRET).verify(request.body, refreshed)
