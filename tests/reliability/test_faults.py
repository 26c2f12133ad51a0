"""Dependency faults: Postgres or Redis down, partitioned or slow, and back.

Every service process reaches Postgres and Redis through a fault-injecting proxy (conftest).
Without Redis the platform serves from the database and writes still succeed, and nothing stale
is served once Redis is back; without Postgres it answers 503 problem documents quickly, says
it is not ready, stays alive, and recovers within seconds of the database returning; a slow
database gives timeouts, not a pile-up; and no write acknowledged with a 2xx is ever lost.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from regatta.common.redis.cache import CachedResponse, RedisCache
from regatta.common.redis.pipelined import Endpoint, PipelinedRedis
from tests.eventually import eventually
from tests.reliability.conftest import FaultyStack
from tests.reliability.faultproxy import FaultProxy
from tests.servers import RedisServer

pytestmark = pytest.mark.postgres

PROBLEM = "application/problem+json"
# Longer than any bound the stack's settings allow a request (pool wait + connect + statement);
# a request that outlives it is hanging, and the client's timeout fails the test.
REQUEST_BOUND_SECONDS = 15.0
RECOVERY_SECONDS = 10.0


def replica(faulty: FaultyStack, name: str) -> str:
    """The base URL of one replica (``items-1``), bypassing nginx."""
    return f"http://127.0.0.1:{faulty.stack.child(name).port}"


async def readiness(client: httpx.AsyncClient, faulty: FaultyStack) -> list[httpx.Response]:
    return await asyncio.gather(
        *(client.get(f"http://127.0.0.1:{port}/readyz") for port in faulty.replica_ports())
    )


def assert_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert answer.headers["retry-after"]
    assert answer.json()["status"] == 503


async def cache_hits(client: httpx.AsyncClient, base: str) -> float:
    metrics = (await client.get(f"{base}/metrics")).text
    found = re.search(
        r'regatta_cache_requests_total\{[^}]*result="hit"[^}]*\} ([0-9.e+]+)', metrics
    )
    return float(found[1]) if found else 0.0


@dataclass
class CacheClient:
    """What a replica holds: a pipelined connection advancing the generation as it opens."""

    redis: Redis
    cache: RedisCache
    reader: PipelinedRedis

    async def aclose(self) -> None:
        await self.reader.aclose()
        await self.redis.aclose()


def cache_client(port: int) -> CacheClient:
    """The pipelined connection (reads and stores), advancing the generation through redis-py."""
    redis = Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    reader = PipelinedRedis(
        Endpoint("127.0.0.1", port),
        timeout=0.5,
        connect_timeout=0.5,
        retry_after=0.0,  # production waits a second before reconnecting; not needed here
    )
    cache = RedisCache(reader, ttl_seconds=60, prefix="t:cache:")
    reader.on_connect = partial(cache.advance_generation, redis)
    return CacheClient(redis, cache, reader)


async def test_cache_entries_from_before_an_outage_are_not_trusted_after_it(
    redis_server: RedisServer,
) -> None:
    def entry(version: int) -> CachedResponse:
        return CachedResponse(version=version, etag=f'"{version}"', body=b"%d" % version)

    redis_server.start()
    redis_server.flushall()
    with FaultProxy(redis_server.port, name="redis-proxy") as proxy:
        writer_client = cache_client(proxy.port)
        reader_client = cache_client(proxy.port)
        writer, reader = writer_client.cache, reader_client.cache
        try:
            # Both connected (and so both trust entries stored from now on).
            assert await reader.get("items:1") is None
            await writer.put("items:1", entry(1))
            assert await reader.get("items:1") == entry(1)
            proxy.refuse()
            await writer.put("items:1", entry(2))  # the write's invalidation is lost
            assert await writer.get("items:1") is None
            proxy.recover()
            # Redis still holds version 1; the reader's connection is new, so it distrusts it.
            assert await reader.get("items:1") is None
            # The writer leaves the tombstone it owes first, and reads from the database too.
            assert await writer.get("items:1") is None
            await reader.put("items:1", entry(2))  # refilled from the database
            assert await reader.get("items:1") == entry(2)
            assert await writer.get("items:1") == entry(2)
        finally:
            await writer_client.aclose()
            await reader_client.aclose()


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
async def test_postgres_down_answers_503_quickly_and_recovers_within_seconds(
    healthy: FaultyStack, fault: str
) -> None:
    items = replica(healthy, "items-1")
    async with httpx.AsyncClient(timeout=REQUEST_BOUND_SECONDS, headers=healthy.auth()) as client:
        getattr(healthy.postgres, fault)()
        for answer in await readiness(client, healthy):
            assert answer.status_code == 503
            assert answer.json()["checks"]["database"] == "unavailable"
        assert (await client.get(f"{items}/livez")).status_code == 200
        assert_unavailable(await client.get(f"{items}/items"))
        assert_unavailable(await client.post(f"{items}/items", json={"name": "x", "price": 1}))
        healthy.postgres.recover()

        async def recovered() -> bool:
            answers = await readiness(client, healthy)
            listed = await client.get(f"{items}/items")
            return listed.status_code == 200 and all(a.status_code == 200 for a in answers)

        await eventually(recovered, within=RECOVERY_SECONDS)
        created = await client.post(f"{items}/items", json={"name": "After", "price": 1})
        assert created.status_code == 201


async def test_slow_database_gives_timeouts_not_a_pile_up(healthy: FaultyStack) -> None:
    items = replica(healthy, "items-1")
    async with httpx.AsyncClient(timeout=REQUEST_BOUND_SECONDS * 2) as client:
        # Every packet a second late: a statement takes longer than the stack's command timeout.
        healthy.postgres.delay(1.0)
        burst = [asyncio.create_task(client.get(f"{items}/items")) for _ in range(30)]
        await asyncio.sleep(0.5)
        # The event loop is not clogged by the waiting requests.
        assert (await client.get(f"{items}/livez")).status_code == 200
        answers = await asyncio.gather(*burst)
        assert {a.status_code for a in answers} <= {200, 503}
        timed_out = [a for a in answers if a.status_code == 503]
        assert timed_out  # they gave up rather than queueing for as long as it takes
        for answer in timed_out:
            assert_unavailable(answer)
        healthy.postgres.recover()

        async def fast_again() -> bool:
            return (await client.get(f"{items}/items")).status_code == 200

        await eventually(fast_again, within=RECOVERY_SECONDS)


async def test_redis_down_serves_from_the_database_and_nothing_stale_after(
    healthy: FaultyStack,
) -> None:
    first, second = replica(healthy, "items-1"), replica(healthy, "items-2")
    async with httpx.AsyncClient(timeout=REQUEST_BOUND_SECONDS, headers=healthy.auth()) as client:
        created = await client.post(f"{first}/items", json={"name": "Cached", "price": 1})
        path = created.headers["location"]
        for base in (first, second, first, second):  # both replicas have read it: cached
            assert (await client.get(base + path)).json()["version"] == 1
        healthy.redis.refuse()
        ready = await client.get(f"{first}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"] == "unavailable"
        patched = await client.patch(first + path, json={"price": 2}, headers={"If-Match": '"1"'})
        assert patched.status_code == 200
        assert patched.json()["version"] == 2
        assert (await client.get(first + path)).json()["price"] == 2
        another = await client.post(f"{first}/items", json={"name": "During", "price": 3})
        assert another.status_code == 201
        assert (await client.get(first + another.headers["location"])).status_code == 200
        healthy.redis.recover()
        # The replica that saw nothing of the outage reads first: Redis still holds version 1.
        assert (await client.get(second + path)).json()["version"] == 2
        assert (await client.get(first + path)).json()["version"] == 2
        hits_before = await cache_hits(client, second)

        async def cached_again() -> bool:
            assert (await client.get(second + path)).json()["version"] == 2
            return await cache_hits(client, second) > hits_before

        await eventually(cached_again, within=RECOVERY_SECONDS)


async def test_redis_partition_slows_nothing_past_its_timeout_and_heals(
    healthy: FaultyStack,
) -> None:
    first, second = replica(healthy, "items-1"), replica(healthy, "items-2")
    async with httpx.AsyncClient(timeout=REQUEST_BOUND_SECONDS, headers=healthy.auth()) as client:
        created = await client.post(f"{first}/items", json={"name": "Partitioned", "price": 1})
        path = created.headers["location"]
        for base in (first, second):
            assert (await client.get(base + path)).status_code == 200
        healthy.redis.blackhole()
        patched = await client.patch(first + path, json={"price": 5})
        assert patched.status_code == 200
        assert (await client.get(first + path)).json()["version"] == 2
        healthy.redis.recover()

        async def everywhere_current() -> bool:
            versions = [
                (await client.get(base + path)).json()["version"] for base in (first, second)
            ]
            return versions == [2, 2]

        await eventually(everywhere_current, within=RECOVERY_SECONDS)


@dataclass
class Ledger:
    """Every write the platform acknowledged with a 2xx, to be read back at the end."""

    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # path → last body acked
    ambiguous: set[str] = field(default_factory=set)  # paths with a write of unknown outcome
    notifications: list[str] = field(default_factory=list)
    acknowledged: int = 0
    refused: int = 0
    running: bool = True
    statuses: Counter[int] = field(default_factory=Counter)

    def saw(self, answer: httpx.Response) -> httpx.Response:
        self.statuses[answer.status_code] += 1
        return answer


async def write_steadily(client: httpx.AsyncClient, ledger: Ledger, worker: int) -> None:
    """Create items (with an Idempotency-Key), patch them, send notifications; record 2xx."""
    for n in itertools.count():
        if not ledger.running:
            return
        key = f"ledger-{worker}-{n}-{uuid.uuid4().hex[:6]}"
        body = {"name": f"Ledger {worker}/{n}", "price": 1}
        try:
            created = ledger.saw(
                await client.post("/items", json=body, headers={"Idempotency-Key": key})
            )
            if created.status_code != 201:
                ledger.refused += 1
                await asyncio.sleep(0.1)
                continue
            ledger.acknowledged += 1
            path = created.headers["location"]
            ledger.items[path] = created.json()
            for price in (2, 3):
                version = ledger.items[path]["version"]
                # Until it is answered, a write may or may not have committed (a 503 too).
                ledger.ambiguous.add(path)
                patched = ledger.saw(
                    await client.patch(
                        path, json={"price": price}, headers={"If-Match": f'"{version}"'}
                    )
                )
                if patched.status_code != 200:
                    ledger.refused += 1
                    break
                ledger.ambiguous.discard(path)
                ledger.acknowledged += 1
                ledger.items[path] = patched.json()
            sent = ledger.saw(
                await client.post(
                    "/notifications",
                    json={"channel": "email", "to": "ops@example.com", "subject": key, "body": "x"},
                )
            )
            if sent.status_code == 202:
                ledger.acknowledged += 1
                ledger.notifications.append(sent.headers["location"])
            else:
                ledger.refused += 1
        except httpx.TransportError:
            ledger.refused += 1
            await asyncio.sleep(0.1)


async def read_back(client: httpx.AsyncClient, path: str) -> httpx.Response:
    """GET ``path``, retrying a 503 as its Retry-After asks.

    Just after the faults, a replica may still hold a pooled connection the last fault broke:
    its first use answers 503 and the pool replaces it. This test is about writes surviving,
    so the read-back does what a client does with a 503.
    """
    for _ in range(4):
        answer = await client.get(path)
        if answer.status_code != HTTPStatus.SERVICE_UNAVAILABLE:
            return answer
        await asyncio.sleep(float(answer.headers.get("retry-after", "1")))
    return answer


async def test_no_write_acknowledged_with_2xx_is_lost_through_every_fault(
    healthy: FaultyStack,
) -> None:
    async with httpx.AsyncClient(
        base_url=healthy.stack.gateway, headers=healthy.auth(), timeout=REQUEST_BOUND_SECONDS
    ) as client:
        ledger = Ledger()
        writers = [asyncio.create_task(write_steadily(client, ledger, w)) for w in range(3)]
        try:
            faults = [
                healthy.postgres.refuse,
                healthy.redis.refuse,
                healthy.postgres.blackhole,
                lambda: healthy.postgres.delay(0.3),
                healthy.redis.blackhole,
                healthy.postgres.cut,
            ]
            for fault in faults:
                await asyncio.sleep(1.0)
                fault()
                await asyncio.sleep(1.5)
                healthy.recover()
            await asyncio.sleep(1.0)
        finally:
            healthy.recover()
            ledger.running = False
            await asyncio.gather(*writers)
        assert ledger.acknowledged >= 20
        assert ledger.refused > 0  # the faults were felt
        # Refusals are 503s that say so, never a server error.
        assert set(ledger.statuses) <= {201, 200, 202, 503}, ledger.statuses
        for path, acked in ledger.items.items():
            stored = (await read_back(client, path)).json()
            if path in ledger.ambiguous:
                assert stored["version"] >= acked["version"]
            else:
                assert stored == acked
        for location in ledger.notifications:
            assert (await read_back(client, location)).status_code == HTTPStatus.OK
