"""Bounded deliveries: a hostile receiver costs its own notification a deadline, nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import ValidationError

from regatta.common.settings import Environment
from regatta.notifications.delivery import _read_some
from regatta.notifications.settings import NotificationsSettings
from tests.conftest import AppFactory, client_for
from tests.eventually import eventually
from tests.notifications.hostile import run_hostile
from tests.notifications.test_delivery import send_webhook

MIB = 1024 * 1024
EMAIL = {"channel": "email", "to": "ada@example.com", "subject": "Queued", "body": "behind"}


async def test_a_huge_reply_is_not_read(start_app: AppFactory) -> None:
    async with (
        run_hostile("huge", size=256 * MIB) as receiver,
        start_app() as app,
        client_for(app) as client,
    ):
        location = await send_webhook(client, receiver.url())

        async def settled() -> bool:
            return bool((await client.get(location)).json()["status"] == "delivered")

        await eventually(settled)
        await eventually(lambda: _true(receiver.open_connections == 0))
    # The status is all a delivery needs: the connection is dropped, not read to its end
    # (what the sender managed to write is what the socket buffers took before the drop).
    assert receiver.sent < 64 * MIB, receiver.sent


async def test_a_dripping_receiver_holds_up_only_its_own_notification(
    start_app: AppFactory,
) -> None:
    async with (
        run_hostile("drip-headers", interval=0.5) as receiver,
        # A deadline far longer than an e-mail's delivery takes even on a loaded machine: the
        # e-mail must be seen delivered while the webhook's attempt still runs.
        start_app(delivery_max_attempts=1, webhook_timeout_seconds=6) as app,
        client_for(app) as client,
    ):
        webhook = await send_webhook(client, receiver.url())
        await eventually(lambda: _true(receiver.sent > 0))  # the attempt is under way
        accepted = await client.post("/notifications", json=EMAIL)
        email = accepted.headers["location"]
        seen: dict[str, str] = {}

        async def email_delivered() -> bool:
            if (await client.get(email)).json()["status"] != "delivered":
                return False
            seen["webhook"] = (await client.get(webhook)).json()["status"]
            return True

        await eventually(email_delivered)
        # Sent while the dripping attempt was still running, not after it.
        assert seen["webhook"] == "sending"

        async def webhook_settled() -> bool:
            return bool((await client.get(webhook)).json()["status"] == "failed")

        # Each byte arrives well within httpx's per-read timeout: only a deadline over the
        # whole attempt ends it.
        await eventually(webhook_settled)
        final = (await client.get(webhook)).json()
    assert "deadline" in final["last_error"]
    assert final["attempts"] == 1


async def test_a_dripping_body_does_not_hold_the_attempt(start_app: AppFactory) -> None:
    async with (
        run_hostile("drip-body", interval=4) as receiver,
        start_app() as app,
        client_for(app) as client,
    ):
        location = await send_webhook(client, receiver.url())

        async def delivered() -> bool:
            return bool((await client.get(location)).json()["status"] == "delivered")

        # 200 came at once; twelve bytes at one per 4 s would take 48 s to read.
        await eventually(delivered, within=10)
    assert receiver.sent < 12


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize(
    "settings_values",
    [
        {"webhook_timeout_seconds": 31, "delivery_lease_seconds": 60},
        {"smtp_timeout_seconds": 31, "delivery_lease_seconds": 60},
        {"delivery_lease_seconds": 19},  # the default deadlines are 10 s
    ],
)
def test_an_attempt_deadline_must_be_at_most_half_the_lease(
    settings_values: dict[str, float],
) -> None:
    # Otherwise a live worker's claim could expire mid-attempt and a second worker send again.
    with pytest.raises(ValidationError, match="DELIVERY_LEASE_SECONDS"):
        NotificationsSettings(environment=Environment.TEST, **settings_values)  # type: ignore[arg-type]
    NotificationsSettings(environment=Environment.TEST, delivery_lease_seconds=20)


async def test_a_reply_length_in_digits_that_are_not_ascii_is_not_read() -> None:
    # "¹" is a digit to str.isdigit() and not a number to int(): the reply is dropped unread.
    response = httpx.Response(200, headers=[(b"content-length", b"\xb9")], stream=_Unread())
    await _read_some(response, asyncio.get_running_loop().time() + 1)


class _Unread(httpx.AsyncByteStream):
    def __aiter__(self) -> AsyncIterator[bytes]:
        raise AssertionError("the reply was read")
