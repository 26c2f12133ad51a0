"""An Idempotency-Key is honoured for the retention window, and free again after it."""

from __future__ import annotations

import asyncio

from pydantic import SecretStr

from tests.conftest import AppFactory, client_for

WRITER = {"Authorization": "Bearer expiry-key"}


async def test_an_expired_key_starts_afresh_and_is_then_replayed(start_app: AppFactory) -> None:
    async with (
        start_app(api_keys=[SecretStr("expiry-key")], idempotency_ttl_seconds=1) as app,
        client_for(app) as client,
    ):
        headers = {**WRITER, "Idempotency-Key": "reused-after-expiry"}
        first = await client.post("/items", json={"name": "Buoy", "price": 5}, headers=headers)
        assert first.status_code == 201
        different = await client.post(
            "/items", json={"name": "Anchor", "price": 7}, headers=headers
        )
        assert different.status_code == 422  # still within the window: a different body is refused

        await asyncio.sleep(1.2)  # past the window; the purge has not run (it runs every 10 min)
        second = await client.post("/items", json={"name": "Anchor", "price": 7}, headers=headers)
        assert second.status_code == 201
        assert second.headers["location"] != first.headers["location"]
        assert "idempotent-replayed" not in second.headers

        replay = await client.post("/items", json={"name": "Anchor", "price": 7}, headers=headers)
        assert replay.status_code == 201
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.headers["location"] == second.headers["location"]
