"""The response cache never moves backwards in version, in memory and in Redis alike."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from regatta.common.redis.cache import (
    DELETED,
    CachedResponse,
    MemoryCache,
    RedisCache,
    ResponseCache,
)
from regatta.common.redis.pipelined import Endpoint, PipelinedRedis


def entry(version: int) -> CachedResponse:
    return CachedResponse(version=version, etag=f'"{version}"', body=b'{"v": %d}' % version)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.postgres),
        pytest.param("pipelined", marks=pytest.mark.postgres),
    ]
)
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[ResponseCache]:
    if request.param == "memory":
        yield MemoryCache(ttl_seconds=60, max_entries=100)
        return
    url = request.getfixturevalue("redis_url")
    redis = Redis.from_url(url)
    # "pipelined": reads and stores over the pipelined connection, as a replica does.
    endpoint = Endpoint.from_url(url) if request.param == "pipelined" else None
    reader = PipelinedRedis(endpoint) if endpoint is not None else None
    try:
        yield RedisCache(redis, ttl_seconds=60, prefix=f"test:{request.param}:", reader=reader)
    finally:
        if reader is not None:
            await reader.aclose()
        await redis.aclose()


async def test_miss_then_hit(cache: ResponseCache) -> None:
    assert await cache.get("items:1") is None
    await cache.put("items:1", entry(1))
    assert await cache.get("items:1") == entry(1)


async def test_newer_versions_replace_older_ones(cache: ResponseCache) -> None:
    await cache.put("items:1", entry(1))
    await cache.put("items:1", entry(2))
    assert await cache.get("items:1") == entry(2)


async def test_a_slow_reader_cannot_put_back_what_a_write_replaced(cache: ResponseCache) -> None:
    await cache.put("items:1", entry(3))
    await cache.put("items:1", entry(2))  # rendered from a read that began before the write
    assert await cache.get("items:1") == entry(3)


async def test_invalidation_leaves_a_tombstone_older_readers_cannot_cross(
    cache: ResponseCache,
) -> None:
    await cache.put("items:1", entry(1))
    await cache.invalidate("items:1", 2)
    assert await cache.get("items:1") is None
    await cache.put("items:1", entry(1))
    assert await cache.get("items:1") is None
    await cache.put("items:1", entry(2))  # a reader that saw the write may fill it again
    assert await cache.get("items:1") == entry(2)


async def test_deleted_rows_stay_deleted(cache: ResponseCache) -> None:
    await cache.put("items:1", entry(5))
    await cache.invalidate("items:1", DELETED)
    await cache.put("items:1", entry(5))
    assert await cache.get("items:1") is None


async def test_an_older_tombstone_does_not_hide_a_newer_entry(cache: ResponseCache) -> None:
    await cache.put("items:1", entry(4))
    await cache.invalidate("items:1", 3)
    assert await cache.get("items:1") == entry(4)


async def test_bodies_with_newlines_survive(cache: ResponseCache) -> None:
    odd = CachedResponse(version=1, etag='"1"', body=b'{"a":\n"b\\n"}\n')
    await cache.put("items:9", odd)
    assert await cache.get("items:9") == odd


@pytest.mark.parametrize("pipelined", [False, True], ids=["redis-py", "pipelined"])
async def test_redis_outage_degrades_to_misses(pipelined: bool) -> None:
    redis = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    reader = PipelinedRedis(Endpoint("127.0.0.1", 1), connect_timeout=0.2) if pipelined else None
    cache = RedisCache(redis, ttl_seconds=60, reader=reader)
    try:
        assert await cache.get("items:1") is None
        await cache.put("items:1", entry(1))  # logged, not raised
        await cache.invalidate("items:1", 2)
    finally:
        await redis.aclose()


@pytest.mark.postgres
@pytest.mark.parametrize("pipelined", [False, True], ids=["redis-py", "pipelined"])
async def test_redis_entries_expire_after_the_ttl(redis_url: str, pipelined: bool) -> None:
    redis = Redis.from_url(redis_url)
    endpoint = Endpoint.from_url(redis_url)
    reader = PipelinedRedis(endpoint) if pipelined and endpoint is not None else None
    cache = RedisCache(redis, ttl_seconds=60, prefix=f"ttl:{pipelined}:", reader=reader)
    try:
        await cache.put("items:1", entry(1))
        await cache.invalidate("items:2", 5)
        for key in ("items:1", "items:2"):
            assert 55_000 < await redis.pttl(f"ttl:{pipelined}:{key}") <= 60_000
    finally:
        if reader is not None:
            await reader.aclose()
        await redis.aclose()
