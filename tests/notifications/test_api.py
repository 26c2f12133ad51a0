"""The notifications HTTP contract, on both backends."""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx
import pytest

from tests.conftest import AppFactory, client_for
from tests.eventually import eventually
from tests.notifications.receiver import Receiver

PROBLEM = "application/problem+json"
EMAIL = {"channel": "email", "to": "ada@example.com", "subject": "Hello", "body": "Hi Ada"}


async def status_of(client: httpx.AsyncClient, location: str) -> str:
    return str((await client.get(location)).json()["status"])


async def test_email_is_accepted_with_202_then_delivered(client: httpx.AsyncClient) -> None:
    accepted = await client.post("/notifications", json=EMAIL)
    assert accepted.status_code == 202
    body = accepted.json()
    location = accepted.headers["location"]
    assert location == f"/notifications/{body['id']}"
    assert body["status"] in {"queued", "sending", "delivered"}
    assert body["to"] == "ada@example.com"
    assert "body" not in body

    async def delivered() -> bool:
        return await status_of(client, location) == "delivered"

    await eventually(delivered)
    final = (await client.get(location)).json()
    assert final["attempts"] == 1
    assert final["delivered_at"] is not None


async def test_webhook_is_signed_and_carries_the_delivery_id(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    payload = {"order": 42, "note": "ünïcode"}
    accepted = await client.post(
        "/notifications", json={"channel": "webhook", "url": receiver.url(), "payload": payload}
    )
    assert accepted.status_code == 202
    notification_id = accepted.json()["id"]

    async def arrived() -> bool:
        return bool(receiver.requests)

    await eventually(arrived)
    request = receiver.requests[0]
    assert json.loads(request.body) == payload
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-regatta-delivery"] == notification_id
    expected = hmac.new(b"regatta-development-signing-secret", request.body, hashlib.sha256)
    assert request.headers["x-regatta-signature"] == "sha256=" + expected.hexdigest()

    async def delivered() -> bool:
        return await status_of(client, accepted.headers["location"]) == "delivered"

    await eventually(delivered)


@pytest.mark.parametrize(
    "body",
    [
        {"channel": "email", "to": "not-an-address", "subject": "s", "body": "b"},
        {"channel": "email", "to": "a@example.com", "subject": "", "body": "b"},
        {"channel": "email", "to": "a@example.com", "subject": "s"},
        {"channel": "sms", "to": "+441234"},
        {"channel": "webhook", "url": "ftp://example.com/x", "payload": {}},
        {"channel": "webhook", "url": "file:///etc/passwd", "payload": {}},
        {"channel": "webhook", "url": "not a url", "payload": {}},
        {"channel": "webhook", "url": "https://example.com", "payload": "text"},
        {"channel": "webhook", "url": "http://169.254.169.254/latest/meta-data", "payload": {}},
        {"channel": "webhook", "url": "http://10.0.0.5/hook", "payload": {}},
        {"channel": "webhook", "url": "http://[fd00::1]/hook", "payload": {}},
        {"channel": "webhook", "url": "http://192.168.1.1:8080/hook", "payload": {}},
        {"channel": "webhook", "url": "http://[::ffff:169.254.169.254]/", "payload": {}},
        {"channel": "webhook", "url": "http://0.0.0.0/", "payload": {}},
        {**EMAIL, "extra": True},
    ],
)
async def test_bad_notifications_are_422_and_nothing_is_stored(
    client: httpx.AsyncClient, body: dict[str, object]
) -> None:
    response = await client.post("/notifications", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert (await client.get("/notifications")).json()["data"] == []


async def test_loopback_is_refused_unless_allowed(start_app: AppFactory) -> None:
    async with start_app(webhook_allowed_networks=[]) as app, client_for(app) as client:
        body = {"channel": "webhook", "url": "http://127.0.0.1:9/hook", "payload": {}}
        assert (await client.post("/notifications", json=body)).status_code == 422
        local = {"event": "item.created", "url": "http://localhost:9/hook"}
        assert (await client.post("/notifications/subscriptions", json=local)).status_code == 422


async def test_idempotent_send_queues_once(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "welcome-ada"}
    first = await client.post("/notifications", json=EMAIL, headers=headers)
    again = await client.post("/notifications", json=EMAIL, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len((await client.get("/notifications")).json()["data"]) == 1
    other = await client.post("/notifications", json={**EMAIL, "subject": "x"}, headers=headers)
    assert other.status_code == 422


async def test_list_filters_by_status_and_pages(client: httpx.AsyncClient) -> None:
    ids = [(await client.post("/notifications", json=EMAIL)).json()["id"] for _ in range(5)]

    async def all_delivered() -> bool:
        page = await client.get("/notifications", params={"status": "delivered", "limit": 100})
        return len(page.json()["data"]) == 5

    await eventually(all_delivered)
    first = (await client.get("/notifications", params={"limit": 3})).json()
    second = (
        await client.get("/notifications", params={"limit": 3, "cursor": first["next_cursor"]})
    ).json()
    assert [n["id"] for n in first["data"] + second["data"]] == ids
    assert second["next_cursor"] is None
    assert (await client.get("/notifications", params={"status": "failed"})).json()["data"] == []
    assert (await client.get("/notifications", params={"status": "lost"})).status_code == 422
    bad_cursor = await client.get("/notifications", params={"cursor": "abc"})
    assert bad_cursor.status_code == 422


@pytest.mark.parametrize(
    "bad_id", ["8ccc2c3b-5fa9-4844-9b6a-915e2fb5bf26", "not-a-uuid", "1", "../../etc"]
)
async def test_unknown_notification_is_404(client: httpx.AsyncClient, bad_id: str) -> None:
    response = await client.get(f"/notifications/{bad_id}")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM


async def test_subscriptions_are_created_listed_and_deleted(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await client.post(
        "/notifications/subscriptions", json={"event": "hero.created", "url": receiver.url()}
    )
    assert created.status_code == 201
    subscription = created.json()
    assert subscription["event"] == "hero.created"
    listed = (await client.get("/notifications/subscriptions")).json()
    assert [s["id"] for s in listed["data"]] == [subscription["id"]]
    path = f"/notifications/subscriptions/{subscription['id']}"
    assert (await client.delete(path)).status_code == 204
    assert (await client.delete(path)).status_code == 404
    assert (await client.delete("/notifications/subscriptions/nope")).status_code == 404
    assert (await client.get("/notifications/subscriptions")).json()["data"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"event": "item.exploded", "url": "https://example.com/hook"},
        {"event": "item.created", "url": "gopher://example.com"},
        {"event": "item.created"},
        {"event": "item.created", "url": "http://169.254.169.254/"},
    ],
)
async def test_bad_subscriptions_are_422(
    client: httpx.AsyncClient, body: dict[str, object]
) -> None:
    response = await client.post("/notifications/subscriptions", json=body)
    assert response.status_code == 422


async def test_item_created_reaches_the_subscriber(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    for event in ("item.created", "item.updated", "hero.created"):
        subscribed = await client.post(
            "/notifications/subscriptions", json={"event": event, "url": receiver.url()}
        )
        assert subscribed.status_code == 201
    item = (await client.post("/items", json={"name": "Lamp", "price": 3.5})).json()
    hero = await client.post("/heroes", json={"name": "Ada", "secret_name": "Countess"})
    assert hero.status_code == 201

    async def both_arrived() -> bool:
        return len(receiver.requests) >= 2

    await eventually(both_arrived)
    events = {r.headers["x-regatta-event"]: json.loads(r.body) for r in receiver.requests}
    assert set(events) == {"item.created", "hero.created"}
    item_event = events["item.created"]
    assert item_event["type"] == "item.created"
    assert item_event["data"]["id"] == item["id"]
    assert item_event["data"]["price"] == 3.5
    assert "secret_name" not in json.dumps(events["hero.created"])
    assert "Countess" not in json.dumps(events["hero.created"])

    await client.patch(f"/items/{item['id']}", json={"price": 4})

    async def update_arrived() -> bool:
        return any(r.headers["x-regatta-event"] == "item.updated" for r in receiver.requests)

    await eventually(update_arrived)
    listed = (await client.get("/notifications", params={"limit": 100})).json()["data"]
    assert sorted(n["event"] for n in listed) == ["hero.created", "item.created", "item.updated"]
