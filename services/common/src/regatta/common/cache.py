"""Read-through cache of final response bytes and their ETag: Redis when configured, else memory.

Every entry carries the resource version it was rendered from. A write leaves a *tombstone* at
its new version before it returns, and a reader may only store an entry whose version is not
older than what the cache holds. So a reader that fetched the row just before a write commits
can never put the old bytes back after the write's invalidation: no replica serves a stale item
after a successful write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from cachetools import TTLCache
from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger("regatta.cache")

# The version a deletion leaves behind: newer than any version the row could have had.
DELETED = 2**53 - 1


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A rendered representation: JSON bytes, its ETag and the version it shows."""

    version: int
    etag: str
    body: bytes


class ResponseCache(Protocol):
    """Where rendered single-resource responses are kept between requests."""

    async def get(self, key: str) -> CachedResponse | None:
        """The entry under ``key``, or None on a miss (or a tombstone)."""

    async def put(self, key: str, entry: CachedResponse) -> None:
        """Store ``entry`` unless the cache already knows a newer version."""

    async def invalidate(self, key: str, version: int) -> None:
        """Forget ``key``: readers may store it again only at ``version`` or later."""


class MemoryCache:
    """In-process cache for the embedded default (one process, so coherent by construction)."""

    def __init__(self, *, ttl_seconds: int, max_entries: int) -> None:
        # Value: (version, entry or None for a tombstone).
        self._entries: TTLCache[str, tuple[int, CachedResponse | None]] = TTLCache(
            maxsize=max_entries, ttl=ttl_seconds
        )

    async def get(self, key: str) -> CachedResponse | None:
        """The entry under ``key``, or None."""
        found = self._entries.get(key)
        return found[1] if found else None

    async def put(self, key: str, entry: CachedResponse) -> None:
        """Store unless a newer version is known."""
        self._store(key, entry.version, entry)

    async def invalidate(self, key: str, version: int) -> None:
        """Leave a tombstone at ``version``."""
        self._store(key, version, None)

    def _store(self, key: str, version: int, entry: CachedResponse | None) -> None:
        found = self._entries.get(key)
        if found is None or found[0] <= version:
            self._entries[key] = (version, entry)


class NullCache:
    """No caching at all (``CACHE_ENABLED=false``): every read goes to the database."""

    async def get(self, key: str) -> CachedResponse | None:  # noqa: ARG002
        """Always a miss."""
        return None

    async def put(self, key: str, entry: CachedResponse) -> None:
        """Store nothing."""

    async def invalidate(self, key: str, version: int) -> None:
        """Nothing to forget."""


# One round trip, atomic: refuse to move an entry backwards in version.
_STORE_IF_NOT_OLDER = """
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^(%d+)\\n'))
  if version and version > tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class RedisCache:
    """Cache shared by every replica. Redis trouble degrades to misses, never to errors."""

    def __init__(self, redis: Redis, *, ttl_seconds: int, prefix: str = "") -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = ttl_seconds * 1000
        self._store_script = redis.register_script(_STORE_IF_NOT_OLDER)

    async def get(self, key: str) -> CachedResponse | None:
        """The entry under ``key``, or None."""
        try:
            raw = cast("bytes | None", await self._redis.get(self._prefix + key))
        except (RedisError, OSError) as exc:
            logger.warning("cache read failed, serving from the database: %r", exc)
            return None
        return _decode(raw) if raw else None

    async def put(self, key: str, entry: CachedResponse) -> None:
        """Store unless a newer version is known."""
        encoded = b"%d\n%s\n" % (entry.version, entry.etag.encode()) + entry.body
        await self._store(key, entry.version, encoded)

    async def invalidate(self, key: str, version: int) -> None:
        """Leave a tombstone at ``version``."""
        await self._store(key, version, b"%d\n\n" % version)

    async def _store(self, key: str, version: int, encoded: bytes) -> None:
        try:
            await self._store_script(
                keys=[self._prefix + key], args=[version, encoded, self._ttl_ms]
            )
        except (RedisError, OSError) as exc:
            logger.warning("cache write failed for %s: %r", key, exc)


def _decode(raw: bytes) -> CachedResponse | None:
    version, etag, body = raw.split(b"\n", 2)
    if not etag:
        return None  # a tombstone
    return CachedResponse(version=int(version), etag=etag.decode(), body=body)


class MeteredCache:
    """Any cache, with every look-up reported as a hit or a miss."""

    def __init__(self, inner: ResponseCache, count: Callable[[str, bool], None]) -> None:
        self.inner = inner
        self._count = count

    async def get(self, key: str) -> CachedResponse | None:
        """The entry under ``key``, or None; counted."""
        found = await self.inner.get(key)
        self._count(key, found is not None)
        return found

    async def put(self, key: str, entry: CachedResponse) -> None:
        """Store unless a newer version is known."""
        await self.inner.put(key, entry)

    async def invalidate(self, key: str, version: int) -> None:
        """Leave a tombstone at ``version``."""
        await self.inner.invalidate(key, version)
