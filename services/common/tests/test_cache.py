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
    ]
)
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[ResponseCache]:
    if request.param == "memory":
        yield MemoryCache(ttl_seconds=60, max_entries=100)
        return
    redis = PipelinedRedis(Endpoint.from_url(request.getfixturevalue("redis_url")))
    try:
        yield RedisCache(redis, ttl_seconds=60, prefix="test:")
    finally:
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


async def test_redis_outage_degrades_to_misses() -> None:
    redis = PipelinedRedis(Endpoint("127.0.0.1", 1), connect_timeout=0.2)
    cache = RedisCache(redis, ttl_seconds=60)
    try:
        assert await cache.get("items:1") is None
        await cache.put("items:1", entry(1))  # logged, not raised
        await cache.invalidate("items:1", 2)
    finally:
        await redis.aclose()


@pytest.mark.postgres
async def test_redis_entries_expire_after_the_ttl(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    reader = PipelinedRedis(Endpoint.from_url(redis_url))
    cache = RedisCache(reader, ttl_seconds=60, prefix="ttl:")
    try:
        await cache.put("items:1", entry(1))
        await cache.invalidate("items:2", 5)
        for key in ("items:1", "items:2"):
            assert 55_000 < await redis.pttl(f"ttl:{key}") <= 60_000
    finally:
        await reader.aclose()
        await redis.aclose()
