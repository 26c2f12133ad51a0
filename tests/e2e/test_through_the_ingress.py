"""End to end through nginx: the contract, replicas that never serve stale data, events."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import httpx
import pytest
from stack import Stack

from tests.eventually import eventually
from tests.notifications.receiver import run_receiver

pytestmark = pytest.mark.postgres


def auth(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.api_key}"}


async def test_contract_through_the_ingress(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway) as client:
        refused = await client.post("/items", json={"name": "Kite", "price": 12})
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        created = await client.post(
            "/items", json={"name": "Kite", "price": 12}, headers=auth(stack)
        )
        assert created.status_code == 201
        location = created.headers["location"]
        read = await client.get(location)
        assert read.json() == created.json()
        assert (
            await client.get(location, headers={"If-None-Match": read.headers["etag"]})
        ).status_code == 304
        assert read.headers["x-request-id"]
        too_big = await client.post(
            "/items",
            content=b'{"name": "' + b"x" * (1024 * 1024) + b'", "price": 1}',
            headers={**auth(stack), "Content-Type": "application/json"},
        )
        assert too_big.status_code == 413
        assert too_big.headers["content-type"] == "application/problem+json"
        hero = await client.post(
            "/heroes", json={"name": "Ada", "secret_name": "Countess"}, headers=auth(stack)
        )
        assert hero.status_code == 201
        assert "secret_name" not in hero.text
        page = await client.get("/heroes", params={"name": "Ada"})
        assert [h["id"] for h in page.json()["data"]] == [hero.json()["id"]]
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/livez")).status_code == 404  # only the service prefixes route
        assert (await client.get("/items/999999")).status_code == 404


async def test_no_stale_read_on_either_replica_after_a_write(stack: Stack) -> None:
    replicas = [
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}") for p in stack.upstreams["items"]
    ]
    async with httpx.AsyncClient(base_url=stack.gateway) as gateway:
        location = (
            await gateway.post("/items", json={"name": "Shared", "price": 1}, headers=auth(stack))
        ).headers["location"]
        try:
            for version in range(2, 22):
                for replica in replicas:  # both caches warm
                    assert (await replica.get(location)).status_code == 200
                patched = await gateway.patch(
                    location, json={"price": version}, headers=auth(stack)
                )
                assert patched.json()["version"] == version
                for replica in replicas:
                    assert (await replica.get(location)).json()["version"] == version
                assert (await gateway.get(location)).json()["price"] == version
        finally:
            for replica in replicas:
                await replica.aclose()


async def test_idempotent_replay_across_replicas(stack: Stack) -> None:
    first_port, second_port = stack.upstreams["heroes"]
    body = {"name": "Once", "secret_name": "s"}
    headers = {**auth(stack), "Idempotency-Key": "e2e-replay"}
    async with httpx.AsyncClient() as client:
        first = await client.post(
            f"http://127.0.0.1:{first_port}/heroes", json=body, headers=headers
        )
        again = await client.post(
            f"http://127.0.0.1:{second_port}/heroes", json=body, headers=headers
        )
        through = await client.post(f"{stack.gateway}/heroes", json=body, headers=headers)
    assert first.status_code == again.status_code == through.status_code == 201
    assert again.content == first.content == through.content
    assert again.headers["idempotent-replayed"] == "true"


async def test_item_event_reaches_a_webhook_through_the_worker(stack: Stack) -> None:
    async with run_receiver() as receiver, httpx.AsyncClient(base_url=stack.gateway) as client:
        subscribed = await client.post(
            "/notifications/subscriptions",
            json={"event": "item.deleted", "url": receiver.url()},
            headers=auth(stack),
        )
        assert subscribed.status_code == 201
        item = (
            await client.post("/items", json={"name": "Doomed", "price": 2}, headers=auth(stack))
        ).json()
        assert (await client.delete(f"/items/{item['id']}", headers=auth(stack))).status_code == 204

        async def arrived() -> bool:
            return bool(receiver.requests)

        await eventually(arrived, within=30)
        await asyncio.sleep(0.5)
        assert len(receiver.requests) == 1
        request = receiver.requests[0]
        event = json.loads(request.body)
        assert event["type"] == "item.deleted"
        assert event["data"]["id"] == item["id"]
        signature = hmac.new(stack.signing_secret.encode(), request.body, hashlib.sha256)
        assert request.headers["x-regatta-signature"] == "sha256=" + signature.hexdigest()
        delivery = request.headers["x-regatta-delivery"]

        async def marked_delivered() -> bool:
            answer = await client.get(f"/notifications/{delivery}", headers=auth(stack))
            return bool(answer.json()["status"] == "delivered")

        await eventually(marked_delivered, within=10)
