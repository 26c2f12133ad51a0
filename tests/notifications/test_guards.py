"""Hostile input to the notifications API: header injection, private reads, retried creates."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from regatta.common.data.db import Database
from regatta.common.http.context import platform_of
from regatta.notifications import repository
from tests.conftest import AppFactory, client_for
from tests.eventually import eventually

PROBLEM = "application/problem+json"
EMAIL = {"channel": "email", "to": "ada@example.com", "subject": "Hello", "body": "Hi Ada"}
KEY = "guards-key"


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "Hello\r\nBcc: everyone@example.com"},
        {"subject": "Hello\nBcc: everyone@example.com"},
        {"subject": "Hello\u2028Bcc: everyone@example.com"},
        {"subject": "Hello\u2029there"},
        {"subject": "Hello\x85there"},
        {"subject": "Hello\x0bthere"},
        {"to": "ada@example.com\r\nBcc: everyone@example.com"},
        {"to": "ada\u2028@example.com"},
    ],
)
async def test_header_fields_refuse_line_breaks(
    client: httpx.AsyncClient, changes: dict[str, str]
) -> None:
    response = await client.post("/notifications", json={**EMAIL, **changes})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert [e["field"] for e in response.json()["errors"]] == [f"email.{f}" for f in changes]


async def test_an_unexpected_delivery_error_is_recorded_and_retried(
    start_app: AppFactory,
) -> None:
    # A row the API would refuse today (stored before the rule existed): building its message
    # raises inside the worker. It must still end as an attempt with its error, not loop.
    async with start_app(delivery_max_attempts=2) as app, client_for(app) as client:
        database: Database = platform_of(app).serving.database
        async with database.sessions() as session, session.begin():
            row = await repository.insert_notification(
                session,
                {
                    "channel": "email",
                    "recipient": "ada@example.com",
                    "subject": "Hello\r\nBcc: everyone@example.com",
                    "body": "b",
                },
            )
        location = f"/notifications/{row.id}"
        final: dict[str, Any] = {}

        async def failed() -> bool:
            final.update((await client.get(location)).json())
            return bool(final["status"] == "failed")

        await eventually(failed)
    assert final["attempts"] == 2
    assert "unexpected error" in final["last_error"]


@pytest.mark.parametrize(
    "path", ["/notifications", "/notifications/subscriptions", "/notifications/{id}"]
)
async def test_reads_need_a_key_when_keys_are_configured(start_app: AppFactory, path: str) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    async with start_app(api_keys=[SecretStr(KEY)]) as app, client_for(app) as client:
        created = await client.post("/notifications", json=EMAIL, headers=auth)
        assert created.status_code == 202
        url = path.format(id=created.json()["id"])
        anonymous = await client.get(url)
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.headers["content-type"] == PROBLEM
        assert "ada@example.com" not in anonymous.text
        assert (await client.head(url)).status_code == 401
        wrong = await client.get(url, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        assert (await client.get(url, headers=auth)).status_code == 200
        # Items and heroes stay public.
        assert (await client.get("/items")).status_code == 200


async def test_reads_are_open_without_keys(client: httpx.AsyncClient) -> None:
    assert (await client.get("/notifications")).status_code == 200
    assert (await client.get("/notifications/subscriptions")).status_code == 200


async def test_subscriptions_honour_idempotency_keys_and_answer_location(
    client: httpx.AsyncClient,
) -> None:
    body = {"event": "item.created", "url": "https://example.com/hook?token=abc"}
    headers = {"Idempotency-Key": "subscribe-once"}
    first = await client.post("/notifications/subscriptions", json=body, headers=headers)
    again = await client.post("/notifications/subscriptions", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    location = first.headers["location"]
    assert location == f"/notifications/subscriptions/{first.json()['id']}"
    shown = await client.get(location)
    assert shown.status_code == 200
    assert shown.json() == first.json()
    listed = (await client.get("/notifications/subscriptions")).json()["data"]
    assert len(listed) == 1
    other = await client.post(
        "/notifications/subscriptions", json={**body, "event": "hero.created"}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["type"].endswith("idempotency-key-reused")


async def test_a_notification_has_an_etag_and_cache_control(client: httpx.AsyncClient) -> None:
    created = await client.post("/notifications", json=EMAIL)
    location = created.headers["location"]

    async def delivered() -> bool:
        return bool((await client.get(location)).json()["status"] == "delivered")

    await eventually(delivered)
    shown = await client.get(location)
    etag = shown.headers["etag"]
    assert etag.startswith('"')
    assert "no-cache" in shown.headers["cache-control"]
    assert "private" in shown.headers["cache-control"]
    again = await client.get(location, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    other = await client.get(location, headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200


@pytest.mark.parametrize("depth", [65, 944, 5000])
async def test_json_nested_past_the_limit_is_422(client: httpx.AsyncClient, depth: int) -> None:
    payload = "[" * depth + "]" * depth
    body = f'{{"channel": "webhook", "url": "https://example.com/h", "payload": {payload}}}'
    response = await client.post(
        "/notifications", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text[:300]
    assert response.headers["content-type"] == PROBLEM
    assert (await client.get("/notifications")).json()["data"] == []


async def test_json_at_the_nesting_limit_is_accepted(client: httpx.AsyncClient) -> None:
    payload = "[" * 63 + '"]]]{{{"' + "]" * 63  # brackets in a string nest nothing
    body = f'{{"channel": "webhook", "url": "https://example.com/h", "payload": {payload}}}'
    response = await client.post(
        "/notifications", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text[:300]


def test_the_nesting_check_reads_a_body_of_escaped_quotes_in_linear_time() -> None:
    # An unterminated string of escaped quotes made the check search again from every quote:
    # quadratic, about an hour of a blocked event loop for one 1 MiB body. Linear, it takes a
    # fraction of a second, far inside the bound (in a process of its own, so that the old
    # behaviour fails the test instead of hanging it).
    code = (
        "from regatta.common.http.middleware import json_depth\n"
        "body = b'[' * 65 + b'\"' + b'\\\\\"' * 500_000\n"
        "assert len(body) > 1_000_000\n"
        "print(json_depth(body))\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
    except subprocess.TimeoutExpired:
        pytest.fail("counting the nesting of a 1 MiB body took over a minute")
    assert done.stdout.strip() == "65"  # the open string nests nothing: 65 levels, refused


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        (
            "application/json",
            b'{"channel": "email", "to": "a@example.com", "subject": "\xff"}',
            422,
        ),
        ("application/json", b'{"channel": "email", "subject": "\xc3\x28"}', 422),
        ("application/json; charset=latin-1", b'{"subject": "caf\xe9"}', 415),
        ("application/json; charset=utf-16", b'{"subject": "x"}', 415),
    ],
)
async def test_bodies_that_cannot_be_decoded_follow_the_contract(
    client: httpx.AsyncClient, content_type: str, body: bytes, status: int
) -> None:
    response = await client.post(
        "/notifications", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize(
    "host",
    ["[64:ff9b::a9fe:a9fe]", "[::a9fe:a9fe]", "[2002:a9fe:a9fe::]", "[::ffff:0:a9fe:a9fe]"],
)
async def test_ipv6_spellings_of_metadata_addresses_are_422(
    start_app: AppFactory, host: str
) -> None:
    async with start_app(webhook_allowed_networks=["::/0"]) as app, client_for(app) as client:
        body = {"channel": "webhook", "url": f"http://{host}/latest", "payload": {}}
        response = await client.post("/notifications", json=body)
        assert response.status_code == 422, response.text
        subscription = {"event": "item.created", "url": f"http://{host}/latest"}
        refused = await client.post("/notifications/subscriptions", json=subscription)
        assert refused.status_code == 422, refused.text


async def test_idempotency_compares_validated_values(client: httpx.AsyncClient) -> None:
    json_type = {"Content-Type": "application/json"}
    item = {**json_type, "Idempotency-Key": "price-spelling"}
    first = await client.post("/items", content=b'{"name": "Lamp", "price": 3}', headers=item)
    assert first.status_code == 201, first.text
    for spelling in (b"3.0", b"3e0", b"3.00", b"0.3e1"):
        body = b'{"price": ' + spelling + b', "name": "Lamp"}'
        again = await client.post("/items", content=body, headers=item)
        assert again.status_code == 201, (spelling, again.text)
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
    other = await client.post("/items", content=b'{"name": "Lamp", "price": 4}', headers=item)
    assert other.status_code == 422

    webhook = {**json_type, "Idempotency-Key": "payload-spelling"}
    template = '{"channel": "webhook", "url": "https://example.com/h", "payload": {"n": %s}}'
    sent = await client.post("/notifications", content=template % "3", headers=webhook)
    assert sent.status_code == 202, sent.text
    resent = await client.post("/notifications", content=template % "3.0", headers=webhook)
    assert resent.status_code == 202, resent.text
    assert resent.json()["id"] == sent.json()["id"]
    text = await client.post("/notifications", content=template % '"3"', headers=webhook)
    assert text.status_code == 422  # a string is not the number
