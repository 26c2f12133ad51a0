"""Delivery: real SMTP, retries with backoff, permanent failures, redirects, SSRF at send time."""

from __future__ import annotations

import ipaddress
import socket

import httpx
import pytest

from regatta.notifications import ssrf
from regatta.notifications.service import backoff_seconds
from regatta.notifications.settings import NotificationsSettings
from tests.conftest import AppFactory, client_for
from tests.eventually import eventually
from tests.notifications.receiver import Receiver, run_receiver, run_smtp


async def wait_for_final(client: httpx.AsyncClient, location: str) -> dict[str, object]:
    final: dict[str, object] = {}

    async def settled() -> bool:
        final.update((await client.get(location)).json())
        return final["status"] in {"delivered", "failed"}

    await eventually(settled)
    return final


async def send_webhook(client: httpx.AsyncClient, url: str) -> str:
    accepted = await client.post(
        "/notifications", json={"channel": "webhook", "url": url, "payload": {"n": 1}}
    )
    assert accepted.status_code == 202, accepted.text
    return str(accepted.headers["location"])


async def test_email_goes_through_a_real_smtp_server(start_app: AppFactory) -> None:
    with run_smtp() as (port, mailbox):
        overrides = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_tls": "none"}
        async with start_app(**overrides) as app, client_for(app) as client:
            accepted = await client.post(
                "/notifications",
                json={
                    "channel": "email",
                    "to": "grace@example.com",
                    "subject": "Release 1.0",
                    "body": "It ships.",
                },
            )
            final = await wait_for_final(client, accepted.headers["location"])
    assert final["status"] == "delivered"
    assert len(mailbox.messages) == 1
    message = mailbox.messages[0]
    assert message["To"] == "grace@example.com"
    assert message["Subject"] == "Release 1.0"
    assert message["X-Regatta-Delivery"] == accepted.json()["id"]
    assert "It ships." in message.get_payload()


async def test_unreachable_smtp_server_is_retried_then_failed(start_app: AppFactory) -> None:
    overrides = {"smtp_host": "127.0.0.1", "smtp_port": 1, "delivery_max_attempts": 3}
    async with start_app(**overrides) as app, client_for(app) as client:
        email = {"channel": "email", "to": "a@example.com", "subject": "s", "body": "b"}
        accepted = await client.post("/notifications", json=email)
        final = await wait_for_final(client, accepted.headers["location"])
    assert final["status"] == "failed"
    assert final["attempts"] == 3
    assert "SMTP" in str(final["last_error"])


async def test_server_errors_are_retried_with_backoff_then_failed(start_app: AppFactory) -> None:
    async with (
        run_receiver(statuses=[500]) as receiver,
        start_app(delivery_max_attempts=4) as app,
        client_for(app) as client,
    ):
        final = await wait_for_final(client, await send_webhook(client, receiver.url()))
    assert final["status"] == "failed"
    assert final["attempts"] == 4
    assert final["last_error"] == "HTTP 500"
    assert len(receiver.requests) == 4
    assert len(receiver.deliveries()) == 1  # the same delivery id every time


async def test_a_retry_that_succeeds_is_delivered(start_app: AppFactory) -> None:
    async with (
        run_receiver(statuses=[503, 429, 408, 204]) as receiver,
        start_app() as app,
        client_for(app) as client,
    ):
        final = await wait_for_final(client, await send_webhook(client, receiver.url()))
    assert final["status"] == "delivered"
    assert final["attempts"] == 4


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_client_errors_are_not_retried(start_app: AppFactory, status: int) -> None:
    async with (
        run_receiver(statuses=[status]) as receiver,
        start_app() as app,
        client_for(app) as client,
    ):
        final = await wait_for_final(client, await send_webhook(client, receiver.url()))
    assert final["status"] == "failed"
    assert final["attempts"] == 1
    assert len(receiver.requests) == 1


async def test_redirects_to_other_hosts_are_refused(start_app: AppFactory) -> None:
    async with (
        run_receiver() as elsewhere,
        run_receiver() as receiver,
        start_app() as app,
        client_for(app) as client,
    ):
        receiver.redirect_to = elsewhere.url()
        final = await wait_for_final(client, await send_webhook(client, receiver.url("/redirect")))
        assert final["status"] == "failed"
        assert "redirect" in str(final["last_error"])
        assert elsewhere.requests == []
        receiver.redirect_to = receiver.url("/moved")
        final = await wait_for_final(client, await send_webhook(client, receiver.url("/redirect")))
        assert final["status"] == "delivered"
        assert [r.path for r in receiver.requests][-1] == "/moved"


async def test_names_resolving_to_private_addresses_are_blocked_at_delivery(
    start_app: AppFactory, receiver: Receiver
) -> None:
    name = socket.gethostname()
    resolved = {info[4][0] for info in socket.getaddrinfo(name, receiver.port)}
    if any(ipaddress.ip_address(str(a)).is_global for a in resolved):
        pytest.skip(f"{name} resolves to a public address here; nothing private to reach")
    async with start_app(webhook_allowed_networks=[]) as app, client_for(app) as client:
        final = await wait_for_final(
            client, await send_webhook(client, f"http://{name}:{receiver.port}/hook")
        )
    assert final["status"] == "failed"
    assert "blocked" in str(final["last_error"])
    assert receiver.requests == []


async def test_every_resolved_address_must_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    async def rebinding(_host: str, _port: int) -> list[ipaddress.IPv4Address]:
        return [ipaddress.IPv4Address("93.184.216.34"), ipaddress.IPv4Address("10.0.0.5")]

    monkeypatch.setattr(ssrf, "_resolve", rebinding)
    backend = ssrf.GuardedBackend(ssrf.AddressPolicy())
    with pytest.raises(ssrf.BlockedAddressError):
        await backend.connect_tcp("rebind.example", 80)


@pytest.mark.parametrize(
    ("address", "allowed", "blocked"),
    [
        ("8.8.8.8", [], False),
        ("127.0.0.1", [], True),
        ("127.0.0.1", ["127.0.0.0/8"], False),
        ("10.1.2.3", [], True),
        ("10.1.2.3", ["10.0.0.0/8"], False),
        ("169.254.169.254", ["0.0.0.0/0"], True),
        ("::ffff:169.254.169.254", [], True),
        ("::ffff:10.0.0.1", [], True),
        ("fe80::1", ["::/0"], True),
        ("::1", [], True),
        ("100.64.0.1", [], True),
        ("224.0.0.1", [], True),
        ("0.0.0.0", [], True),  # noqa: S104 -- an address under test, not a bind
        ("2606:4700::1111", [], False),
        # IPv6 spellings that carry an IPv4 address are judged by that address.
        ("64:ff9b::a9fe:a9fe", ["::/0"], True),  # NAT64, well-known prefix
        ("64:ff9b::a00:1", [], True),
        ("64:ff9b::808:808", [], False),
        ("64:ff9b:1::a9fe:a9fe", ["::/0"], True),  # NAT64, local-use prefix (/96)
        ("64:ff9b:1:a9fe:a9:fe00::", ["::/0"], True),  # the same, /48 layout
        ("64:ff9b:1::808:808", [], False),
        ("::a9fe:a9fe", ["::/0"], True),  # IPv4-compatible
        ("::a00:1", [], True),
        ("::ffff:0:a9fe:a9fe", ["::/0"], True),  # IPv4-translated
        ("2002:a9fe:a9fe::", ["::/0"], True),  # 6to4
        ("2002:a00:1::1", [], True),
        ("2002:808:808::1", [], False),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", [], True),  # Teredo, client 192.0.2.45
        ("::a00:1", ["10.0.0.0/8"], False),  # an allowed network stays allowed in any spelling
    ],
)
def test_address_policy(address: str, allowed: list[str], blocked: bool) -> None:
    policy = ssrf.AddressPolicy(ipaddress.ip_network(n) for n in allowed)
    if blocked:
        with pytest.raises(ssrf.BlockedAddressError):
            policy.check(ipaddress.ip_address(address))
    else:
        policy.check(ipaddress.ip_address(address))


def test_link_local_can_never_be_allowed() -> None:
    with pytest.raises(ValueError, match="link-local"):
        NotificationsSettings(webhook_allowed_networks="169.254.0.0/16")


def test_backoff_has_full_jitter_and_a_cap() -> None:
    settings = NotificationsSettings(
        delivery_backoff_base_seconds=1, delivery_backoff_max_seconds=30
    )
    for attempt, ceiling in ((1, 1), (2, 2), (3, 4), (6, 30), (40, 30)):
        samples = [backoff_seconds(attempt, settings) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.5  # spread over the range, not a fixed delay
        assert min(samples) < ceiling * 0.5
