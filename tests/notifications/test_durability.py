"""At-least-once, proven the hard way: a worker SIGKILLed mid-batch, Redis stopped mid-flow."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from regatta.notifications.main import create_app as create_notifications_app
from regatta.notifications.settings import NotificationsSettings
from tests.conftest import AppFactory, client_for
from tests.eventually import eventually
from tests.lifespan import lifespan
from tests.notifications.receiver import free_port, run_receiver
from tests.servers import RedisServer

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("settings", ["postgres"], indirect=True),
]


@contextmanager
def worker_process(settings: NotificationsSettings, port: int) -> Iterator[subprocess.Popen[bytes]]:
    assert settings.redis_url is not None
    env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "DELIVERY_LEASE_SECONDS": "2",
        "WEBHOOK_TIMEOUT_SECONDS": "1",
        "SMTP_TIMEOUT_SECONDS": "1",
        "DELIVERY_BATCH_SIZE": "10",
        "WORKER_POLL_SECONDS": "0.1",
        "WORKER_PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "regatta.notifications.worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_a_worker_killed_mid_batch_loses_nothing(settings: NotificationsSettings) -> None:
    app = create_notifications_app(settings)  # the API alone: delivery is the workers' job
    async with (
        run_receiver(delay_seconds=0.5) as receiver,
        lifespan(app),
        client_for(app) as client,
    ):
        ids = []
        for n in range(30):
            accepted = await client.post(
                "/notifications",
                json={"channel": "webhook", "url": receiver.url(), "payload": {"n": n}},
            )
            ids.append(accepted.json()["id"])

        port = free_port()
        with worker_process(settings, port) as first:

            async def worker_answers() -> bool:
                try:
                    async with httpx.AsyncClient() as probe:
                        return (
                            await probe.get(f"http://127.0.0.1:{port}/livez")
                        ).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(worker_answers, within=60)

            async def mid_batch() -> bool:
                return len(receiver.requests) >= 3

            await eventually(mid_batch, within=60)
            first.send_signal(signal.SIGKILL)
            first.wait()
        in_flight = len(receiver.requests)
        assert in_flight < 30, "the worker finished before it could be killed"

        with worker_process(settings, free_port()) as second:

            async def all_delivered() -> bool:
                page = await client.get(
                    "/notifications", params={"status": "delivered", "limit": 100}
                )
                return len(page.json()["data"]) == 30

            await eventually(all_delivered, within=90)
            assert second.poll() is None
        assert receiver.deliveries() == set(ids)  # duplicates allowed, losses not


async def test_events_created_while_redis_is_down_arrive_after_it_returns(
    start_app: AppFactory, redis_server: RedisServer
) -> None:
    async with run_receiver() as receiver, start_app() as app, client_for(app) as client:
        subscribed = await client.post(
            "/notifications/subscriptions", json={"event": "item.created", "url": receiver.url()}
        )
        assert subscribed.status_code == 201
        first = (await client.post("/items", json={"name": "Before", "price": 1})).json()

        async def first_arrived() -> bool:
            return len(receiver.requests) == 1

        await eventually(first_arrived)

        redis_server.stop()
        try:
            during = []
            for n in range(3):
                created = await client.post("/items", json={"name": f"During {n}", "price": 2})
                assert created.status_code == 201  # writes never depend on Redis
                during.append(created.json()["id"])
            await asyncio.sleep(1)
            assert len(receiver.requests) == 1
        finally:
            redis_server.start()

        async def all_arrived() -> bool:
            return len(receiver.requests) >= 4

        await eventually(all_arrived, within=60)
    delivered = {json.loads(r.body)["data"]["id"] for r in receiver.requests}
    assert delivered == {first["id"], *during}
