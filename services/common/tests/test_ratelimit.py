"""Rate limits: exact headers, one limit across replicas, no spoofing, Redis outages survived."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from daemons import RedisServer
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from regatta.common.http.app import create_app
from regatta.common.http.context import ContextFactory, RequestContext
from regatta.common.http.ratelimit import (
    Decision,
    MemoryStore,
    Policy,
    RateLimiter,
    RateLimitMiddleware,
    RedisStore,
    TrustedProxies,
    client_address,
    gcra,
)
from regatta.common.redis.pipelined import PipelinedRedis
from regatta.common.settings import Environment, ServiceSettings
from tests.lifespan import lifespan

# A route that needs a writer's key, as the services declare one (http/context.py).
Writer = Annotated[RequestContext, Depends(ContextFactory("things", "writer"))]

HOUR = 3600
# Every test's window is an hour: nothing is earned back while a test runs, so counts are exact.
READS, WRITES = 3, 2
KEY_A, KEY_B = "key-a-" + "x" * 20, "key-b-" + "y" * 20
PEER = ("203.0.113.7", 50000)


def make_settings(tmp_path: Path, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "environment": Environment.TEST,
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/regatta.db",
        "rate_limit_enabled": True,
        "rate_limit_reads": READS,
        "rate_limit_writes": WRITES,
        "rate_limit_window_seconds": HOUR,
        "redis_key_prefix": f"t{uuid.uuid4().hex[:8]}:",
    }
    return ServiceSettings(**{**values, **overrides})


def make_app(settings: ServiceSettings) -> FastAPI:
    app = create_app(settings, [], title="limited", service_name="things")

    async def read_things() -> dict[str, str]:
        return {"status": "read"}

    async def write_things(context: Writer) -> dict[str, str]:
        return {"status": "written", "by": context.writer}

    app.add_api_route("/things", read_things, methods=["GET"])
    app.add_api_route("/things", write_things, methods=["POST"])
    return app


@asynccontextmanager
async def serving(app: FastAPI, client: tuple[str, int] = PEER) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=client)
    async with (
        lifespan(app),
        httpx.AsyncClient(transport=transport, base_url="http://things.test") as http,
    ):
        yield http


def freeze_clock(app: FastAPI) -> None:
    # The limiter install_rate_limit gave the middleware.
    middleware = [m for m in app.user_middleware if m.cls is RateLimitMiddleware]  # type: ignore[comparison-overlap]
    limiters = [m.kwargs["limiter"] for m in middleware]
    assert len(limiters) == 1
    limiter = limiters[0]
    assert isinstance(limiter, RateLimiter)
    assert isinstance(limiter.store, MemoryStore)
    limiter.store.clock = lambda: 10**12


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def metric(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(name)


# The algorithm itself, on explicit clocks.


def test_a_full_quota_at_once_then_one_request_per_interval() -> None:
    policy = Policy("reads", quota=4, window_seconds=60)  # one request back every 15 s
    tat = None
    for remaining in (3, 2, 1, 0):
        decision, tat = gcra(0, tat, policy)
        assert decision.allowed
        assert decision.remaining == remaining
    assert decision.reset_us == 60_000_000  # the whole quota is back in a window
    refused, unchanged = gcra(1_000_000, tat, policy)
    assert not refused.allowed
    assert unchanged is None
    assert refused.wait_us == 14_000_000
    assert not gcra(14_999_999, tat, policy)[0].allowed
    again, tat = gcra(15_000_000, tat, policy)
    assert again.allowed
    assert again.remaining == 0


def test_an_idle_client_gets_its_quota_back_but_no_more() -> None:
    policy = Policy("writes", quota=2, window_seconds=10)
    _, tat = gcra(0, None, policy)
    _, tat = gcra(0, tat, policy)
    decision, tat = gcra(3600 * 1_000_000, tat, policy)
    assert decision.allowed
    assert decision.remaining == 1


# Over HTTP, in process (the embedded default without Redis).


async def test_headers_are_exact_and_429_is_a_problem(tmp_path: Path) -> None:
    app = make_app(make_settings(tmp_path))
    async with serving(app) as client:
        freeze_clock(app)
        for used in range(1, READS + 1):
            response = await client.get("/things")
            assert response.status_code == 200
            assert response.headers["RateLimit-Policy"] == '"reads";q=3;w=3600'
            assert response.headers["RateLimit"] == f'"reads";r={READS - used};t={used * 1200}'
            assert "Retry-After" not in response.headers
        refused = await client.get("/things")
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1200"
        assert refused.headers["RateLimit"] == '"reads";r=0;t=1200'
        assert refused.headers["RateLimit-Policy"] == '"reads";q=3;w=3600'
        assert refused.headers["Content-Type"] == "application/problem+json"
        problem = refused.json()
        assert problem["status"] == 429
        assert problem["type"].endswith("/rate-limited")
        assert "1200" in problem["detail"]
        # Writes are their own class, with their own quota.
        written = await client.post("/things", json={})
        assert written.status_code == 200
        assert written.headers["RateLimit-Policy"] == '"writes";q=2;w=3600'
        assert written.headers["RateLimit"] == '"writes";r=1;t=1800'


async def test_probes_metrics_and_preflights_are_never_limited(tmp_path: Path) -> None:
    app = make_app(make_settings(tmp_path))
    async with serving(app) as client:
        for _ in range(READS + 1):
            await client.get("/things")
        assert (await client.get("/things")).status_code == 429
        for path in ("/livez", "/healthz", "/readyz", "/metrics"):
            for _ in range(READS + 1):
                response = await client.get(path)
                assert response.status_code == 200, path
                assert "RateLimit" not in response.headers
        options = await client.options("/things")
        assert options.status_code != 429


async def test_off_unless_enabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RATE_LIMIT_ENABLED", raising=False)
    assert not ServiceSettings().rate_limit_enabled
    app = make_app(make_settings(tmp_path, rate_limit_enabled=False))
    async with serving(app) as client:
        for _ in range(READS * 3):
            response = await client.get("/things")
            assert response.status_code == 200
            assert "RateLimit" not in response.headers


async def test_a_zero_quota_leaves_its_class_unlimited(tmp_path: Path) -> None:
    app = make_app(make_settings(tmp_path, rate_limit_reads=0))
    async with serving(app) as client:
        for _ in range(READS * 3):
            response = await client.get("/things")
            assert response.status_code == 200
            assert "RateLimit" not in response.headers
        assert (await client.post("/things", json={})).headers["RateLimit"].startswith('"writes"')


async def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATE_LIMIT_ENABLED", "true")
    monkeypatch.setenv("RATE_LIMIT_READS", "50")
    monkeypatch.setenv("RATE_LIMIT_WRITES", "5")
    monkeypatch.setenv("RATE_LIMIT_WINDOW_SECONDS", "10")
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, fd00::/8")
    settings = ServiceSettings()
    assert settings.rate_limit_enabled
    assert (settings.rate_limit_reads, settings.rate_limit_writes) == (50, 5)
    assert settings.rate_limit_window_seconds == 10
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "fd00::/8"]
    monkeypatch.setenv("TRUSTED_PROXIES", "")
    assert ServiceSettings().trusted_proxies == []
    monkeypatch.setenv("TRUSTED_PROXIES", "not-a-network")
    with pytest.raises(ValueError, match="trusted_proxies"):
        ServiceSettings()


# Who a client is: a valid API key, else its address (believed from a proxy only if trusted).


async def test_valid_api_keys_get_their_own_bucket_and_invented_ones_do_not(
    tmp_path: Path,
) -> None:
    app = make_app(make_settings(tmp_path, api_keys=f"{KEY_A},{KEY_B}"))
    async with serving(app) as client:
        for _ in range(READS):
            assert (await client.get("/things", headers=bearer(KEY_A))).status_code == 200
        assert (await client.get("/things", headers=bearer(KEY_A))).status_code == 429
        # The same address with another key, or with none, is someone else.
        assert (await client.get("/things", headers=bearer(KEY_B))).status_code == 200
        for _ in range(READS):
            assert (await client.get("/things")).status_code == 200
        # Made-up keys count against the address: they cannot buy a fresh quota each.
        for attempt in range(3):
            invented = await client.get("/things", headers=bearer(f"invented-{attempt}"))
            assert invented.status_code == 429
        # Limited writes are refused before authentication is even looked at.
        for _ in range(WRITES):
            assert (await client.post("/things", json={})).status_code == 401
        assert (await client.post("/things", json={})).status_code == 429
        assert (await client.post("/things", json={}, headers=bearer(KEY_B))).status_code == 200


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(tmp_path: Path) -> None:
    app = make_app(make_settings(tmp_path, trusted_proxies="10.0.0.0/8"))
    async with serving(app, client=PEER) as client:
        for n in range(READS):
            response = await client.get("/things", headers={"X-Forwarded-For": f"198.51.100.{n}"})
            assert response.status_code == 200
        spoofed = await client.get("/things", headers={"X-Forwarded-For": "198.51.100.99"})
        assert spoofed.status_code == 429


async def test_behind_a_trusted_proxy_the_right_most_untrusted_hop_is_the_client(
    tmp_path: Path,
) -> None:
    app = make_app(make_settings(tmp_path, trusted_proxies="10.0.0.0/8"))
    async with serving(app, client=("10.1.2.3", 40000)) as client:
        for n in range(READS):
            # What the client sent, then what the proxy appended.
            forwarded = f"192.0.2.{n}, 198.51.100.1"
            response = await client.get("/things", headers={"X-Forwarded-For": forwarded})
            assert response.status_code == 200
        for spoof in ("192.0.2.200, 198.51.100.1", "198.51.100.1, 10.9.9.9"):
            response = await client.get("/things", headers={"X-Forwarded-For": spoof})
            assert response.status_code == 429, spoof
        # Another client behind the same proxy has its own quota.
        other = await client.get("/things", headers={"X-Forwarded-For": "198.51.100.2"})
        assert other.status_code == 200
        # Without the header, the proxy itself is the client.
        assert (await client.get("/things")).status_code == 200


def test_client_addresses() -> None:
    proxies = TrustedProxies([ip_network("10.0.0.0/8"), ip_network("2001:db8:ffff::/48")])
    untrusted, trusted = "203.0.113.7", "10.0.0.1"
    assert client_address(untrusted, [b"198.51.100.1"], proxies) == untrusted
    assert client_address(trusted, [], proxies) == trusted
    assert client_address(trusted, [b"1.1.1.1, 198.51.100.1"], proxies) == "198.51.100.1"
    # Several header lines are one list, in order.
    assert client_address(trusted, [b"198.51.100.1", b"10.0.0.9"], proxies) == "198.51.100.1"
    # Every hop trusted: the left-most is the nearest to the client anyone knows.
    assert client_address(trusted, [b"10.0.0.7, 10.0.0.8"], proxies) == "10.0.0.7"
    assert client_address(trusted, [b" , "], proxies) == trusted
    # Ports are not part of an address; IPv6 clients are one /64.
    assert client_address(trusted, [b"198.51.100.1:4711"], proxies) == "198.51.100.1"
    assert client_address(trusted, [b"[2001:db8:1:2::5]:443"], proxies) == "2001:db8:1:2::/64"
    assert client_address("2001:db8:1:2:aaaa::1", [], proxies) == "2001:db8:1:2::/64"
    assert client_address("::ffff:198.51.100.1", [], proxies) == "198.51.100.1"
    assert client_address("2001:db8:ffff::1", [b"203.0.113.9"], proxies) == "203.0.113.9"
    # Whatever a proxy wrote that is not an address still names one client, bounded.
    assert client_address(trusted, [b"_hidden"], proxies) == "_hidden"
    assert len(client_address(trusted, [b"x" * 5000], proxies)) == 64


# Across replicas, through one Redis.


@pytest.mark.postgres
async def test_two_replicas_share_one_limit(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url=redis_url)
    first, second = make_app(settings), make_app(settings)
    async with serving(first) as one, serving(second) as two:
        answers = [await (one, two)[n % 2].get("/things") for n in range(READS * 2)]
    assert [a.status_code for a in answers] == [200] * READS + [429] * READS
    pattern = re.compile(r'^"reads";r=(\d+);t=(\d+)$')
    for used, answer in enumerate(answers[:READS], start=1):
        assert answer.headers["RateLimit-Policy"] == '"reads";q=3;w=3600'
        found = pattern.match(answer.headers["RateLimit"])
        assert found is not None
        assert int(found[1]) == READS - used
        # Up to a whole interval later than the first request of the burst.
        assert (used - 1) * 1200 < int(found[2]) <= used * 1200
    for refused in answers[READS:]:
        retry_after = int(refused.headers["Retry-After"])
        assert 0 < retry_after <= 1200
        assert refused.headers["RateLimit"] == f'"reads";r=0;t={retry_after}'


@pytest.mark.postgres
async def test_services_and_prefixes_do_not_share_buckets(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url=redis_url)
    elsewhere = make_settings(tmp_path, redis_url=redis_url)  # another install: another prefix
    async with serving(make_app(settings)) as one, serving(make_app(elsewhere)) as two:
        for _ in range(READS):
            assert (await one.get("/things")).status_code == 200
        assert (await one.get("/things")).status_code == 429
        assert (await two.get("/things")).status_code == 200


@pytest.mark.postgres
async def test_a_redis_outage_fails_open_and_limits_resume_after_it(
    tmp_path: Path,
    redis_url: str,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(make_settings(tmp_path, redis_url=redis_url))
    async with serving(app) as client:
        for _ in range(READS):
            assert (await client.get("/things")).status_code == 200
        assert (await client.get("/things")).status_code == 429

        await asyncio.to_thread(redis_server.stop)
        with caplog.at_level(logging.WARNING, logger="regatta.ratelimit"):
            for _ in range(READS * 3):
                response = await client.get("/things")
                assert response.status_code == 200
                assert "RateLimit" not in response.headers
        warnings = [r.getMessage() for r in caplog.records if r.name == "regatta.ratelimit"]
        assert len(warnings) == 1  # once per outage, not once per request
        assert "cannot reach Redis" in warnings[0]
        text = (await client.get("/metrics")).text
        assert metric(text, "regatta_rate_limit_unavailable_total") == READS * 3

        await asyncio.to_thread(redis_server.start)
        # Redis came back empty; the limiter asks it again after a short pause, by itself.
        checked: list[int] = []  # statuses of the requests Redis answered for
        deadline = asyncio.get_running_loop().time() + 60
        while 429 not in checked:
            assert asyncio.get_running_loop().time() < deadline, checked
            response = await client.get("/things")
            if "RateLimit" in response.headers:
                checked.append(response.status_code)
            else:
                assert response.status_code == 200
                await asyncio.sleep(0.1)  # still in the pause after the outage
    # Once Redis answered again, the quota held exactly.
    assert checked == [200] * READS + [429]


class BrokenStore(MemoryStore):
    """A store failing as redis-py does under uvloop once Redis closed the connection."""

    calls = 0

    async def acquire(self, key: str, policy: Policy) -> Decision:
        self.calls += 1
        assert key.startswith("t:reads:ip-")
        assert policy.name == "reads"
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")


def reads_limiter(
    policy: Policy, store: MemoryStore | RedisStore, registry: CollectorRegistry
) -> RateLimiter:
    """A limiter of reads only over ``store``, counting unchecked requests in ``registry``."""
    return RateLimiter(
        reads=policy,
        writes=None,
        key_prefix="t:",
        proxies=TrustedProxies([]),
        store=store,
        unavailable=Counter("unavailable", "Unchecked requests.", registry=registry),
    )


async def test_any_store_failure_fails_open_and_pauses_before_asking_again() -> None:
    store = BrokenStore(max_window_seconds=60)
    registry = CollectorRegistry()
    policy = Policy("reads", quota=1, window_seconds=60)
    limiter = reads_limiter(policy, store, registry)
    scope = {"type": "http", "headers": [], "client": PEER}
    assert await limiter.acquire(scope, policy) is None
    assert await limiter.acquire(scope, policy) is None
    assert store.calls == 1  # the second request did not wait on a broken store
    assert registry.get_sample_value("unavailable_total") == 2


class SlowBrokenStore(MemoryStore):
    """A black-holed Redis: each call hangs until released, then fails."""

    calls = 0
    release: asyncio.Event

    async def acquire(self, key: str, policy: Policy) -> Decision:
        self.calls += 1
        await self.release.wait()
        raise TimeoutError(key, policy.name)


async def test_while_redis_fails_one_request_at_a_time_asks_it_again() -> None:
    store = SlowBrokenStore(max_window_seconds=60)
    registry = CollectorRegistry()
    store.release = asyncio.Event()
    policy = Policy("reads", quota=1, window_seconds=60)
    limiter = reads_limiter(policy, store, registry)
    scope = {"type": "http", "headers": [], "client": PEER}
    store.release.set()
    assert await limiter.acquire(scope, policy) is None  # Redis fails: the outage begins
    limiter._paused_until = 0.0  # the pause is over
    store.release.clear()
    probe = asyncio.create_task(limiter.acquire(scope, policy))
    await asyncio.sleep(0)
    # While that probe hangs, the others neither wait nor pile onto Redis.
    async with asyncio.timeout(30):  # were they to wait on the probe, this would hang instead
        others = await asyncio.gather(*(limiter.acquire(scope, policy) for _ in range(5)))
    assert others == [None] * 5
    store.release.set()
    assert await probe is None
    assert store.calls == 2
    assert registry.get_sample_value("unavailable_total") == 7


async def test_redis_not_open_yet_does_not_end_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    # Redis fails, then the store has no connection to ask (None): nothing answered, so the
    # limiter may not announce that Redis is reachable again.
    asked: list[int] = []

    def redis() -> PipelinedRedis | None:
        asked.append(1)
        if len(asked) == 1:
            raise ConnectionError("refused")
        return None

    registry = CollectorRegistry()
    store = RedisStore(redis=redis, round_trip=Histogram("trip", "Round trips.", registry=registry))
    policy = Policy("reads", quota=1, window_seconds=60)
    limiter = reads_limiter(policy, store, registry)
    scope = {"type": "http", "headers": [], "client": PEER}
    with caplog.at_level(logging.WARNING, logger="regatta.ratelimit"):
        assert await limiter.acquire(scope, policy) is None  # the outage begins
        limiter._paused_until = 0.0  # the pause is over
        assert await limiter.acquire(scope, policy) is None  # no connection: nobody answered
    assert len(asked) == 2
    assert "reaches Redis again" not in caplog.text
    assert limiter._failing
