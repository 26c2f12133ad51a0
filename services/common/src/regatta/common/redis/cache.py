"""Response cache monotonic in version (Redis, memory, none)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from cachetools import TTLCache
from redis.asyncio import Redis

from regatta.common.redis.pipelined import PipelinedRedis, Script
from regatta.common.telemetry.metrics import PlatformMetrics

logger = logging.getLogger("regatta.cache")

# A deletion's version: newer than any the row could have had.
DELETED = 2**53 - 1
# Most keys owed a tombstone (a write while Redis was down); the generation covers the rest.
MAX_OWED_TOMBSTONES = 10_000

# Refuse to move an entry back in version; stamp it with the current generation. Layout: version,
# "" (the layout before generations reads it as a miss), generation, ETag ("" if a tombstone), body.
_STORE_SCRIPT = Script("""
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^(%d+)\\n'))
  if version and version > tonumber(ARGV[1]) then
    return 0
  end
end
local generation = redis.call('GET', KEYS[2]) or '0'
redis.call('SET', KEYS[1], ARGV[1] .. '\\n\\n' .. generation .. '\\n' .. ARGV[2], 'PX', ARGV[3])
return 1
""")


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


class RedisCache:
    """Cache shared by every replica. Redis trouble degrades to misses, never to errors."""

    def __init__(
        self,
        redis: PipelinedRedis,
        *,
        ttl_seconds: int,
        prefix: str = "",
        observer: PlatformMetrics | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = ttl_seconds * 1000
        self._generation_key = (prefix + "generation").encode()
        self.generation = 0  # the oldest generation of entries trusted
        self._owed: OrderedDict[str, int] = OrderedDict()  # key → tombstone version, oldest first
        self._repaying = asyncio.Lock()
        self.observer = observer

    async def get(self, key: str) -> CachedResponse | None:
        """The entry under ``key``, or None."""
        if self._owed and not await self._repay():
            return None  # Redis is down, or may hold what those writes replaced
        started = time.perf_counter()
        try:
            raw = await self._redis.get((self._prefix + key).encode())
        except Exception as exc:  # noqa: BLE001 -- uvloop raises RuntimeError on a closed socket
            logger.warning("cache read failed, serving from the database: %r", exc)
            self._observe(key, "cache_get", started, failed="read")
            return None
        self._observe(key, "cache_get", started)
        return _decode(raw, self.generation) if raw else None

    async def put(self, key: str, entry: CachedResponse) -> None:
        """Store unless a newer version is known."""
        await self._store(key, entry.version, entry.etag.encode() + b"\n" + entry.body)

    async def invalidate(self, key: str, version: int) -> None:
        """Leave a tombstone at ``version``."""
        await self._store(key, version, b"\n")

    async def advance_generation(self, redis: Redis) -> None:
        """Trust only entries stored from now on (as each new pipelined connection opens)."""
        self.generation = int(await redis.incr(self._generation_key))

    async def _run_store(self, key: str, version: int, encoded: bytes) -> None:
        await self._redis.run_script(
            _STORE_SCRIPT,
            keys=[(self._prefix + key).encode(), self._generation_key],
            args=[b"%d" % version, encoded, b"%d" % self._ttl_ms],
        )

    async def _store(self, key: str, version: int, encoded: bytes) -> None:
        if self._owed:
            await self._repay()
        started = time.perf_counter()
        try:
            await self._run_store(key, version, encoded)
        except Exception as exc:  # noqa: BLE001 -- as in get()
            logger.warning("cache write failed for %s, will retry its invalidation: %r", key, exc)
            self._observe(key, "cache_store", started, failed="write")
            # Perhaps a write's invalidation: owe a tombstone (harmless after a reader's fill).
            self._owed[key] = max(version, self._owed.pop(key, 0))
            if len(self._owed) > MAX_OWED_TOMBSTONES:
                self._owed.popitem(last=False)
            return
        self._observe(key, "cache_store", started)

    def _observe(self, key: str, operation: str, started: float, failed: str = "") -> None:
        if self.observer is None:
            return
        self.observer.observe_redis(key, operation, time.perf_counter() - started)
        if failed:
            self.observer.count_cache_error(key, failed)

    async def _repay(self) -> bool:
        """Write the owed tombstones; True once none is owed."""
        if self._repaying.locked():
            return False  # another request is on it; meanwhile read from the database
        async with self._repaying:
            while self._owed:
                key, version = next(iter(self._owed.items()))
                try:
                    await self._run_store(key, version, b"\n")
                except Exception:  # noqa: BLE001 -- as in get()
                    return False
                if self._owed.get(key) == version:
                    del self._owed[key]
            return True


def _decode(raw: bytes, generation: int) -> CachedResponse | None:
    """An entry stored at ``generation`` or later; None for tombstones and anything else."""
    parts = raw.split(b"\n", 4)
    if len(parts) < 5 or parts[1] or not parts[2].isdigit() or not parts[3]:  # noqa: PLR2004
        return None  # a tombstone, or the layout before generations
    if int(parts[2]) < generation:
        return None  # stored before this process's connections last came up: not trusted
    return CachedResponse(version=int(parts[0]), etag=parts[3].decode(), body=parts[4])
