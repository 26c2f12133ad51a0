"""Rate limits through nginx across two replicas: one shared quota, and a Redis outage survived.

The items replicas are restarted with small quotas for these tests (and restarted again with
the package's settings afterwards). Nginx is on loopback, one of the default trusted proxies, so
the client address a replica limits by is the ``X-Forwarded-For`` the test sends: each test
picks addresses of its own, and the buckets of one never touch another's.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.eventually import eventually
from tests.reliability.conftest import FaultyStack

# The whole stack: Postgres, Redis, nginx and replicas (tests/reliability/conftest.py).
pytestmark = pytest.mark.postgres

READS, WRITES = 5, 3
# An hour: nothing is earned back while a test runs, so the counts are exact.
LIMITS = {
    "RATE_LIMIT_ENABLED": "true",
    "RATE_LIMIT_READS": str(READS),
    "RATE_LIMIT_WRITES": str(WRITES),
    "RATE_LIMIT_WINDOW_SECONDS": "3600",
}
ITEMS_REPLICAS = ("items-1", "items-2")


@asynccontextmanager
async def limited_items(faulty: FaultyStack) -> AsyncIterator[httpx.AsyncClient]:
    """The items replicas running with ``LIMITS``; a client of the gateway."""
    stack = faulty.stack

    async def restart_items() -> None:
        # Both at once: no test traffic is in flight, and a restart is mostly the import.
        await asyncio.gather(*(asyncio.to_thread(stack.restart, name) for name in ITEMS_REPLICAS))

    stack.env.update(LIMITS)
    try:
        await restart_items()
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=10) as client:
            yield client
    finally:
        for variable in LIMITS:
            stack.env.pop(variable, None)
        await restart_items()


def fresh_client() -> dict[str, str]:
    """Headers that make the test a client no other test has been (an address of its own)."""
    return {"X-Forwarded-For": f"2001:db8:{uuid.uuid4().hex[:4]}::1"}


async def requests_seen(faulty: FaultyStack) -> list[float]:
    """How many item requests each items replica answered (from its own /metrics)."""
    seen = []
    async with httpx.AsyncClient(timeout=5) as client:
        for port in faulty.stack.upstreams["items"]:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            seen.append(
                sum(
                    sample.value
                    for family in text_string_to_metric_families(text)
                    for sample in family.samples
                    if sample.name == "http_requests_total"
                    and sample.labels.get("handler", "").startswith("/items")
                )
            )
    return seen


async def test_rate_limits_through_nginx_across_replicas(healthy: FaultyStack) -> None:
    # One restart of the replicas for every check: restarts are what this test spends time on.
    async with limited_items(healthy) as client:
        await two_replicas_share_one_quota(healthy, client)
        await a_redis_outage_serves_everyone_and_limits_come_back(healthy, client)
    for replica in ITEMS_REPLICAS:
        log = healthy.stack.child(replica).log_path.read_text(errors="replace")
        assert healthy.stack.api_key not in log


async def two_replicas_share_one_quota(healthy: FaultyStack, client: httpx.AsyncClient) -> None:
    """Both replicas answer, yet a client's quota holds once; writes count per API key."""
    before = await requests_seen(healthy)
    client_headers = fresh_client()
    reads = [await client.get("/items", headers=client_headers) for _ in range(READS * 2)]
    after = await requests_seen(healthy)
    # Both replicas answered some of them ...
    assert all(seen_after > seen for seen, seen_after in zip(before, after, strict=True))
    # ... yet the quota held once, not once per replica.
    assert [r.status_code for r in reads] == [200] * READS + [429] * READS
    for used, answer in enumerate(reads[:READS], start=1):
        assert answer.headers["RateLimit-Policy"] == f'"reads";q={READS};w=3600'
        assert answer.headers["RateLimit"].startswith(f'"reads";r={READS - used};t=')
    for refused in reads[READS:]:
        assert refused.headers["Content-Type"] == "application/problem+json"
        retry_after = int(refused.headers["Retry-After"])
        assert 0 < retry_after <= 3600 // READS
        assert refused.headers["RateLimit"] == f'"reads";r=0;t={retry_after}'
    # Another client behind the same ingress still has its whole quota.
    assert (await client.get("/items", headers=fresh_client())).status_code == 200

    # Writes have their own quota, kept per API key whatever address the key comes from.
    auth, name = healthy.auth(), f"limited-{uuid.uuid4().hex}"
    created = [
        await client.post(
            "/items", json={"name": name, "price": 1}, headers={**auth, **fresh_client()}
        )
        for _ in range(WRITES + 2)
    ]
    assert [c.status_code for c in created] == [201] * WRITES + [429] * 2
    assert created[0].headers["RateLimit-Policy"] == f'"writes";q={WRITES};w=3600'
    # A refused write wrote nothing.
    found = await client.get("/items", params={"q": name}, headers=fresh_client())
    assert len(found.json()["data"]) == WRITES


async def a_redis_outage_serves_everyone_and_limits_come_back(
    healthy: FaultyStack, client: httpx.AsyncClient
) -> None:
    """Redis refused: nobody is limited and nothing fails; back: the quota holds exactly again."""
    client_headers = fresh_client()
    healthy.redis.refuse()
    try:
        # Twice the quota, and not one request refused or failed.
        during = [await client.get("/items", headers=client_headers) for _ in range(READS * 2)]
        assert [r.status_code for r in during] == [200] * (READS * 2)
        assert not [r for r in during if "RateLimit" in r.headers]
        write = await client.post(
            "/items", json={"name": "outage", "price": 1}, headers=healthy.auth()
        )
        assert write.status_code == 201
    finally:
        healthy.redis.recover()

    # Each replica asks Redis again by itself; from then on the quota holds exactly.
    checked: list[int] = []

    async def limited_again() -> bool:
        answer = await client.get("/items", headers=client_headers)
        if "RateLimit" in answer.headers:
            checked.append(answer.status_code)
        else:
            assert answer.status_code == 200
        return 429 in checked

    await eventually(limited_again, within=30, interval=0.1)
    assert checked == [200] * READS + [429]
