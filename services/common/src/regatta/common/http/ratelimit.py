"""Per-client rate limits per route class, shared by every replica: GCRA in Redis, fail-open."""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, cast

from cachetools import TTLCache
from fastapi import FastAPI
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from regatta.common.http.auth import ApiKeys
from regatta.common.http.context import platform_of
from regatta.common.http.problems import problem_response
from regatta.common.redis.pipelined import PipelinedRedis, Script
from regatta.common.settings import ServiceSettings
from regatta.common.telemetry.metrics import API_KEY_ID_STATE, UNOBSERVED_PATHS

logger = logging.getLogger("regatta.ratelimit")

MICROS: Final = 1_000_000
# Redis is asked again only after this pause: a black-holed one costs a timeout per pause.
RETRY_PAUSE_SECONDS: Final = 1.0
_EXEMPT_PATHS: Final = frozenset(UNOBSERVED_PATHS)

# KEYS[1]: the client's bucket, holding its theoretical arrival time (µs of Redis's clock).
# ARGV: emission interval and capacity (µs). Returns {allowed, remaining, wait µs, reset µs}.
_GCRA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local next_tat = tat + interval
local wait = next_tat - capacity - now
if wait > 0 then
  return {0, 0, wait, tat - now}
end
local ttl_ms = math.ceil((next_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', ttl_ms)
return {1, math.floor((capacity - (next_tat - now)) / interval), 0, next_tat - now}
"""


@dataclass(frozen=True, slots=True)
class Policy:
    """A route class's quota: ``quota`` requests per ``window_seconds`` per client."""

    name: str
    quota: int
    window_seconds: int
    # Derived once, not per request.
    interval_us: int = field(init=False)  # microseconds that earn one request back
    capacity_us: int = field(init=False)  # the whole quota, in intervals
    header: bytes = field(init=False)  # the RateLimit-Policy field value

    def __post_init__(self) -> None:
        interval = max(1, self.window_seconds * MICROS // self.quota)
        object.__setattr__(self, "interval_us", interval)
        object.__setattr__(self, "capacity_us", self.quota * interval)
        header = f'"{self.name}";q={self.quota};w={self.window_seconds}'.encode()
        object.__setattr__(self, "header", header)


@dataclass(frozen=True, slots=True)
class Decision:
    """The store's answer for one request."""

    allowed: bool
    remaining: int
    wait_us: int  # until the next request would be allowed (0 when this one was)
    reset_us: int  # until the whole quota is available again


def gcra(now_us: int, tat_us: int | None, policy: Policy) -> tuple[Decision, int | None]:
    """One step of the algorithm: the decision, and the new arrival time (None: unchanged)."""
    interval, capacity = policy.interval_us, policy.capacity_us
    tat = now_us if tat_us is None or tat_us < now_us else tat_us
    next_tat = tat + interval
    wait = next_tat - capacity - now_us
    if wait > 0:
        return Decision(allowed=False, remaining=0, wait_us=wait, reset_us=tat - now_us), None
    remaining = (capacity - (next_tat - now_us)) // interval
    decision = Decision(allowed=True, remaining=remaining, wait_us=0, reset_us=next_tat - now_us)
    return decision, next_tat


class MemoryStore:
    """The algorithm in process, for one process (the embedded default)."""

    def __init__(self, *, max_window_seconds: int) -> None:
        # A bucket older than the longest window is full again: forgetting it changes nothing.
        self._tats: TTLCache[str, int] = TTLCache(100_000, ttl=max_window_seconds)
        self.clock: Callable[[], int] = lambda: time.monotonic_ns() // 1000  # µs

    async def acquire(self, key: str, policy: Policy) -> Decision:
        """Spend one request of ``key``'s quota, if it has one."""
        decision, tat = gcra(self.clock(), self._tats.get(key), policy)
        if tat is not None:
            self._tats[key] = tat
        return decision


@dataclass(slots=True)
class RedisStore:
    """The algorithm in Redis: one EVALSHA per request, atomic, on Redis's clock."""

    redis: Callable[[], PipelinedRedis | None]  # None until the lifespan has opened it
    round_trip: Histogram  # times each check's round trip
    _SCRIPT = Script(_GCRA)

    async def acquire(self, key: str, policy: Policy) -> Decision | None:
        """Spend one request of ``key``'s quota, if it has one (None: Redis is not open)."""
        redis = self.redis()
        if redis is None:
            return None
        started = time.perf_counter()
        try:
            reply = await redis.run_script(
                self._SCRIPT,
                [key.encode()],
                [b"%d" % policy.interval_us, b"%d" % policy.capacity_us],
            )
        finally:
            self.round_trip.observe(time.perf_counter() - started)
        allowed, remaining, wait, reset = cast("list[int]", reply)
        return Decision(allowed=allowed == 1, remaining=remaining, wait_us=wait, reset_us=reset)


class TrustedProxies:
    """The networks whose X-Forwarded-For is believed."""

    def __init__(self, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._networks = tuple(networks)
        self.trusts = functools.lru_cache(maxsize=1024)(self._trusts)

    def _trusts(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)


def client_address(peer: str, forwarded_for: list[bytes], proxies: TrustedProxies) -> str:
    """The address a request is limited by (IPv6 clients by their /64, which one host holds)."""
    if not forwarded_for or not proxies.trusts(peer):
        return _bucket_of(peer)
    hops = [hop.strip() for hop in b",".join(forwarded_for).decode("latin-1").split(",")]
    hops = [_strip_port(hop) for hop in hops if hop]
    for hop in reversed(hops):
        if not proxies.trusts(hop):
            return _bucket_of(hop)
    # Every hop is a trusted proxy: the left-most is as close to the client as anyone knows.
    return _bucket_of(hops[0]) if hops else _bucket_of(peer)


def _strip_port(hop: str) -> str:
    if hop.startswith("["):  # [2001:db8::1]:443
        return hop[1:].partition("]")[0]
    host, colon, port = hop.rpartition(":")
    return host if colon and port.isdigit() and ":" not in host else hop


@functools.lru_cache(maxsize=4096)
def _bucket_of(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]  # not an address (a Unix socket, an obfuscated hop)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(eq=False, kw_only=True)
class RateLimiter:
    """Policies, client identity and the store; fails open when the store is unreachable."""

    reads: Policy | None
    writes: Policy | None
    key_prefix: str
    proxies: TrustedProxies
    store: MemoryStore | RedisStore
    unavailable: Counter  # requests served unchecked, the store being unreachable
    api_keys: ApiKeys | None = None
    _paused_until: float = field(default=0.0, init=False)
    _failing: bool = field(default=False, init=False)
    _probing: bool = field(default=False, init=False)

    def policy_for(self, method: str) -> Policy | None:
        """The route class of ``method`` (None: not limited)."""
        if method in {"GET", "HEAD"}:
            return self.reads
        return None if method == "OPTIONS" else self.writes

    def identity(self, scope: Scope) -> str:
        """Who is asking: ``key-<digest>`` for a valid API key, else ``ip-<address>``."""
        authorization: bytes | None = None
        forwarded_for: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"x-forwarded-for":
                forwarded_for.append(value)
        if authorization is not None and self.api_keys is not None:
            scheme, _, token = authorization.decode("latin-1").partition(" ")
            token = token.strip()
            # Only a valid key earns its own bucket: made-up keys would each get a fresh one.
            if scheme.lower() == "bearer" and token:
                principal = self.api_keys.principal(token)
                if principal is not None:
                    # The access log names the key too: worked out once per request.
                    scope.setdefault("state", {})[API_KEY_ID_STATE] = principal
                    return principal
        client = scope.get("client")
        return "ip-" + client_address(client[0] if client else "", forwarded_for, self.proxies)

    async def acquire(self, scope: Scope, policy: Policy) -> Decision | None:
        """Spend one request of the caller's quota; None when no store could be asked."""
        probe = False
        if self._failing:
            # One request at a time asks again, after the pause; the others pass unchecked.
            if self._probing or time.monotonic() < self._paused_until:
                self.unavailable.inc()
                return None
            self._probing = probe = True
        key = f"{self.key_prefix}{policy.name}:{self.identity(scope)}"
        try:
            decision = await self.store.acquire(key, policy)
        # Any error (uvloop's RuntimeError on a closed transport too): the limiter fails no request.
        except Exception as exc:  # noqa: BLE001
            self._paused_until = time.monotonic() + RETRY_PAUSE_SECONDS
            self.unavailable.inc()
            if not self._failing:
                self._failing = True
                logger.warning("rate limiter cannot reach Redis, serving unchecked: %r", exc)
            return None
        finally:
            if probe:
                self._probing = False
        if self._failing and decision is not None:  # None: Redis not open, so not reached
            self._failing = False
            logger.warning("rate limiter reaches Redis again; limits apply")
        return decision


def _seconds(micros: int) -> int:
    return max(0, math.ceil(micros / MICROS))


class RateLimitMiddleware:
    """Answer 429 over the limit; add ``RateLimit`` and ``RateLimit-Policy`` to limited routes."""

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        policy = None
        if scope["type"] == "http" and scope["path"] not in _EXEMPT_PATHS:
            policy = self.limiter.policy_for(scope["method"])
        # Not limited; or no decision, no store having answered: fail open.
        if policy is None or (decision := await self.limiter.acquire(scope, policy)) is None:
            await self.app(scope, receive, send)
            return
        if not decision.allowed:
            retry_after = max(1, _seconds(decision.wait_us))
            response = problem_response(
                429,
                f"Too many requests from this client; retry in {retry_after} s.",
                slug="rate-limited",
                headers={
                    "Retry-After": str(retry_after),
                    "RateLimit-Policy": policy.header.decode(),
                    # Resets when Retry-After says, as the draft asks of a 429.
                    "RateLimit": f'"{policy.name}";r=0;t={retry_after}',
                },
            )
            await response(scope, receive, send)
            return
        reset = _seconds(decision.reset_us)
        state = b'"%s";r=%d;t=%d' % (policy.name.encode(), decision.remaining, reset)
        fields = [(b"ratelimit-policy", policy.header), (b"ratelimit", state)]

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *fields]
            await send(message)

        await self.app(scope, receive, send_with_fields)


def install_rate_limit(app: FastAPI, settings: ServiceSettings) -> None:
    """Add the rate-limit middleware when the settings enable it (nothing at all otherwise)."""
    if not settings.rate_limit_enabled:
        return
    platform = platform_of(app)
    service, window = platform.service_name, settings.rate_limit_window_seconds
    reads, writes = settings.rate_limit_reads, settings.rate_limit_writes
    if settings.redis_url is None:
        store: MemoryStore | RedisStore = MemoryStore(max_window_seconds=window)
    else:
        store = RedisStore(
            redis=lambda: platform.runtime.pipelined if platform.runtime is not None else None,
            round_trip=platform.metrics.redis_command.labels(service, "rate_limit"),
        )
    limiter = RateLimiter(
        reads=Policy("reads", reads, window) if reads else None,
        writes=Policy("writes", writes, window) if writes else None,
        key_prefix=f"{settings.redis_key_prefix}ratelimit:{service}:",
        proxies=TrustedProxies(settings.trusted_proxies),
        store=store,
        api_keys=platform.api_keys,
        unavailable=platform.metrics.rate_limit_unavailable.labels(service),
    )
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
