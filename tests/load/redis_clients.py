"""The per-request Redis commands, client by client: what each costs the service's event loop.

A private Redis; then, with 32 tasks on one uvloop loop (as the service has under ``wrk -c32``),
the two commands a request sends: the cached read (a GET of a ~200-byte entry) and the
rate-limit script (EVALSHA of the GCRA). Each client runs twice; CPU is this process's only
(the client's work, which is what the service pays per request). Prints figures; asserts
nothing. Clients not installed are skipped:

    PYTHONPATH=infra/local:tests/load uv run --frozen --with hiredis --with coredis \
        --with valkey-glide python tests/load/redis_clients.py
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvloop
from daemons import RedisServer, find_redis

from regatta.common.http.ratelimit import _GCRA
from regatta.common.redis.pipelined import Endpoint, PipelinedRedis, Script

TASKS = 32
TOTAL = 20_000
ENTRY = b"1\n\n1\n" + b'"0123456789abcdef"\n' + b"x" * 180  # ~200 bytes, as a cached item
KEY = b"bench:cache:items:1"
LIMIT_ARGS = [b"1000", b"100000000"]  # 1,000 requests/s: never refused during the run

# A client under test: (get, rate_limit) coroutine functions.
Operations = tuple[Callable[[], Awaitable[object]], Callable[[int], Awaitable[object]]]


async def rate(name: str, operation: Callable[[int], Awaitable[object]]) -> None:
    """Run ``operation`` TOTAL times from TASKS tasks; print operations/s and CPU each."""

    async def task(first: int) -> None:
        for n in range(first, TOTAL, TASKS):
            await operation(n)

    await asyncio.gather(*(task(n) for n in range(TASKS)))  # warm: connections, scripts
    for run in (1, 2):
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(task(n) for n in range(TASKS)))
        elapsed, used = time.perf_counter() - started, time.process_time() - cpu
        print(f"{name:44} run {run}: {TOTAL / elapsed:7.0f}/s  {used / TOTAL * 1e6:5.1f} µs CPU")


@contextlib.asynccontextmanager
async def pipelined(url: str) -> AsyncIterator[Operations]:
    """Today's hand-written pipelined connection (redis/pipelined.py)."""
    endpoint = Endpoint.from_url(url)
    assert endpoint is not None
    client, script = PipelinedRedis(endpoint), Script(_GCRA)
    try:
        yield (
            lambda: client.get(KEY),
            lambda n: client.run_script(script, [b"bench:rl:%d" % (n % 64)], LIMIT_ARGS),
        )
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def redis_py(url: str, *, single: bool) -> AsyncIterator[Operations]:
    """redis-py's asyncio client: a connection pool, or one connection under a lock."""
    from redis.asyncio import Redis  # noqa: PLC0415 -- the client under test

    client = Redis.from_url(url, single_connection_client=single)
    script = client.register_script(_GCRA)
    try:
        yield (
            lambda: client.get(KEY),
            lambda n: script(keys=[b"bench:rl:%d" % (n % 64)], args=LIMIT_ARGS),
        )
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def coredis_client(url: str) -> AsyncIterator[Operations]:
    """coredis: multiplexes concurrent commands over its connections."""
    coredis: Any = importlib.import_module("coredis")  # measured only when installed
    client: Any = coredis.Redis.from_url(url)
    async with client:
        script = client.register_script(_GCRA)
        yield (
            lambda: client.get(KEY),
            lambda n: script(keys=[b"bench:rl:%d" % (n % 64)], args=LIMIT_ARGS),
        )


@contextlib.asynccontextmanager
async def glide_client(url: str) -> AsyncIterator[Operations]:
    """valkey-glide: a Rust core multiplexing one connection, driven from Python."""
    glide: Any = importlib.import_module("glide")  # measured only when installed
    endpoint = Endpoint.from_url(url)
    assert endpoint is not None
    config = glide.GlideClientConfiguration([glide.NodeAddress(endpoint.host, endpoint.port)])
    client: Any = await glide.GlideClient.create(config)
    script = glide.Script(_GCRA)
    try:
        yield (
            lambda: client.get(KEY),
            lambda n: client.invoke_script(
                script, keys=[b"bench:rl:%d" % (n % 64)], args=LIMIT_ARGS
            ),
        )
    finally:
        await client.close()


async def measure(url: str) -> None:
    """Every client that is installed, GET then rate limit, twice each."""
    from redis.asyncio import Redis  # noqa: PLC0415

    setup = Redis.from_url(url)
    await setup.set(KEY, ENTRY)
    await setup.aclose()
    parser = "hiredis" if importlib.util.find_spec("hiredis") else "Python parser"
    clients: list[tuple[str, Callable[[str], contextlib.AbstractAsyncContextManager[Operations]]]]
    clients = [
        ("pipelined.py", pipelined),
        (f"redis-py pool ({parser})", lambda u: redis_py(u, single=False)),
        (f"redis-py single connection ({parser})", lambda u: redis_py(u, single=True)),
    ]
    if importlib.util.find_spec("coredis"):
        clients.append(("coredis", coredis_client))
    if importlib.util.find_spec("glide"):
        clients.append(("valkey-glide", glide_client))
    for name, open_client in clients:
        async with open_client(url) as (get, limit):
            await rate(f"{name} GET", lambda _: get())
            await rate(f"{name} EVALSHA (rate limit)", limit)


def main() -> int:
    """Start a private Redis and measure."""
    with RedisServer(find_redis()) as server:
        server.start()
        print(f"{TASKS} tasks on one event loop (uvloop), {TOTAL} operations per run")
        uvloop.run(measure(server.url()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
