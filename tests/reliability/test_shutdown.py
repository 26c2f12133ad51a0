"""Graceful shutdown: readiness off at once, in-flight work finished, pools closed, no failed
request while every replica is restarted under load through the ingress.

The stack runs with ``SHUTDOWN_DELAY_SECONDS=1`` (the in-process stand-in for the chart's
preStop sleep), so a replica keeps answering for a moment after SIGTERM and its readiness can be
seen turning to 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import signal
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from regatta.common.settings import ServiceSettings
from tests.eventually import eventually
from tests.notifications.receiver import run_receiver
from tests.reliability.conftest import FaultyStack

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
# Postgres's Terminate message: a client that closes its connection politely sends it last.
POSTGRES_TERMINATE = b"X\x00\x00\x00\x04"


def tcp_peers(pid: int, remote_port: int) -> set[int]:
    """Local ports of ``pid``'s TCP connections to ``127.0.0.1:remote_port``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(remote.split(":")[1], 16) == remote_port:
            ports.add(int(local.split(":")[1], 16))
    return ports


async def refused(port: int) -> bool:
    """Whether nothing accepts connections on the port any more."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def wait_for_exit(faulty: FaultyStack, name: str) -> int:
    process = faulty.stack.child(name).process
    return await asyncio.to_thread(process.wait, 60)


async def test_sigterm_turns_readiness_off_at_once_and_lets_requests_in_flight_finish(
    healthy: FaultyStack,
) -> None:
    stack = healthy.stack
    replica = stack.child("items-2")
    assert replica.port is not None
    body = b'{"name": "Slow upload", "price": 3}'
    reader, writer = await asyncio.open_connection("127.0.0.1", replica.port)
    writer.write(
        b"POST /items HTTP/1.1\r\nHost: stack\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {stack.api_key}\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    await writer.drain()
    database_connections = tcp_peers(replica.process.pid, healthy.postgres.port)
    assert database_connections  # its pool holds connections, through the proxy
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{replica.port}") as client:
        assert (await client.get("/readyz")).status_code == 200
        replica.process.send_signal(signal.SIGTERM)
        readiness = await client.get("/readyz")  # the first request after the signal
        assert readiness.status_code == 503
        assert readiness.json()["checks"] == {"shutdown": "in progress"}
        assert (await client.get("/livez")).status_code == 200

    async def stopped_accepting() -> bool:
        return await refused(replica.port)  # type: ignore[arg-type]

    await eventually(stopped_accepting, within=15)
    # The upload began before the signal: it is still served, on its own connection.
    writer.write(body[10:])
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), timeout=15)
    writer.close()
    head = response.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.startswith("http/1.1 201")
    assert "connection: close" in head
    database_connections |= tcp_peers(replica.process.pid, healthy.postgres.port)
    await wait_for_exit(healthy, "items-2")
    # Every pooled connection was closed the polite way, not dropped with the process.
    farewells = {
        ended.client_port: ended.client_farewell
        for ended in healthy.postgres.ended
        if ended.client_port in database_connections
    }
    assert set(farewells) == database_connections
    assert all(
        farewell is not None and farewell.endswith(POSTGRES_TERMINATE)
        for farewell in farewells.values()
    ), farewells
    await healthy.restart("items-2")
    created = re.search(rb'"id":(\d+)', response)
    assert created is not None
    async with httpx.AsyncClient(base_url=stack.gateway) as client:
        assert (await client.get(f"/items/{int(created[1])}")).json()["name"] == "Slow upload"


async def test_worker_finishes_the_delivery_it_holds_before_it_exits(
    healthy: FaultyStack,
) -> None:
    stack = healthy.stack
    async with (
        run_receiver(delay_seconds=2.0) as receiver,
        httpx.AsyncClient(base_url=stack.gateway, headers=healthy.auth()) as client,
    ):
        accepted = await client.post(
            "/notifications",
            json={"channel": "webhook", "url": receiver.url(), "payload": {"n": 1}},
        )
        assert accepted.status_code == 202
        location = accepted.headers["location"]

        async def delivering() -> bool:
            return bool(receiver.requests)

        await eventually(delivering, within=20)
        stack.child("worker").process.send_signal(signal.SIGTERM)
        await wait_for_exit(healthy, "worker")
        # No worker runs now: what the notification says is what the stopped one left.
        notification = (await client.get(location)).json()
        assert notification["status"] == "delivered"
        assert notification["attempts"] == 1
        assert len(receiver.requests) == 1
        await healthy.restart("worker")


def test_uvicorn_keeps_idle_connections_longer_than_the_ingress(healthy: FaultyStack) -> None:
    # The proxy must be the one that closes an idle connection, or it may send a request on a
    # connection uvicorn is closing at that moment.
    nginx = (healthy.stack.directory / "nginx.conf").read_text()
    upstream_idle = [int(s) for s in re.findall(r"keepalive_timeout (\d+)s;", nginx)]
    env = healthy.stack.service_env()
    fields = {name.lower(): value for name, value in env.items()}
    settings = ServiceSettings.model_validate(
        {name: value for name, value in fields.items() if name in ServiceSettings.model_fields}
    )
    service_idle = settings.keepalive_seconds
    assert upstream_idle
    assert max(upstream_idle) < service_idle
    values = yaml.safe_load((ROOT / "charts/regatta/values.yaml").read_text())
    traefik = (ROOT / "k8s/addons/traefik.yaml").read_text()
    traefik_idle = re.search(r"idleConnTimeout=(\d+)s", traefik)
    assert traefik_idle is not None
    assert int(traefik_idle[1]) < values["config"]["keepaliveSeconds"]


@dataclass
class Load:
    """Steady traffic through the ingress: reads, and creates that carry an Idempotency-Key."""

    client: httpx.AsyncClient
    item_ids: list[int]
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    created: dict[str, int] = field(default_factory=dict)
    running: bool = True

    async def run(self, seed: int) -> None:
        chooser = random.Random(seed)
        for n in itertools.count():
            if not self.running:
                return
            await self.one(chooser, f"{seed}-{n}")

    async def one(self, chooser: random.Random, tag: str) -> None:
        roll = chooser.random()
        key = None
        try:
            if roll < 0.4:
                answer = await self.client.get(f"/items/{chooser.choice(self.item_ids)}")
            elif roll < 0.6:
                answer = await self.client.get("/heroes", params={"limit": 5})
            elif roll < 0.7:
                answer = await self.client.get("/notifications", params={"limit": 5})
            else:
                key = f"roll-{tag}-{uuid.uuid4().hex[:8]}"
                answer = await self.client.post(
                    "/items",
                    json={"name": f"Roll {tag}", "price": 1},
                    headers={"Idempotency-Key": key},
                )
        except httpx.TransportError as error:
            self.failures.append(f"{tag}: {error!r}")
            return
        self.statuses[answer.status_code] += 1
        if not answer.is_success:
            self.failures.append(
                f"{tag}: {answer.request.method} {answer.request.url.path} "
                f"{answer.status_code} {answer.text[:200]}"
            )
        elif key is not None:
            self.created[key] = answer.json()["id"]


async def test_rolling_restart_of_every_replica_under_load_fails_no_request(
    healthy: FaultyStack,
) -> None:
    stack = healthy.stack
    async with httpx.AsyncClient(
        base_url=stack.gateway, headers=healthy.auth(), timeout=30
    ) as client:
        item_ids = []
        for n in range(5):
            created = await client.post("/items", json={"name": f"Seed {n}", "price": 2})
            item_ids.append(created.json()["id"])
        load = Load(client, item_ids)
        workers = [asyncio.create_task(load.run(seed)) for seed in range(4)]
        try:
            await asyncio.sleep(0.5)
            # Each service rolls one replica at a time, as a Deployment rollout with
            # maxUnavailable=1 does, two processes side by side: four Python processes
            # starting at once on a two-core machine starve everything else (the fault proxy
            # in this process included) for longer than the suite's 3 s command timeout.
            for wave in (
                ("items-1", "heroes-1"),
                ("notifications-1", "worker"),
                ("items-2", "heroes-2"),
                ("notifications-2",),
            ):
                served_before = sum(load.statuses.values())
                await asyncio.gather(*(healthy.restart(name) for name in wave))
                # Traffic flowed while these restarted (the load is not stuck behind them).
                assert sum(load.statuses.values()) > served_before
        finally:
            load.running = False
            await asyncio.gather(*workers)
        assert load.failures == []
        assert set(load.statuses) == {200, 201}
        assert load.statuses[201] >= 10
        # Each create happened exactly once, and can be read back.
        assert len(set(load.created.values())) == len(load.created)
        for item_id in list(load.created.values())[:20]:
            assert (await client.get(f"/items/{item_id}")).status_code == 200
