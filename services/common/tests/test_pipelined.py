"""The pipelined GET connection: right value to the right caller, fast and contained failure."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import pytest
from daemons import RedisServer
from redis.asyncio import Redis

from regatta.common.redis.cache import CachedResponse, RedisCache
from regatta.common.redis.pipelined import Endpoint, PipelinedRedis, RedisUnavailableError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://cache:6380/2", Endpoint("cache", 6380, 2)),
        ("redis://localhost", Endpoint("localhost", 6379, 0)),
        ("redis://:s%40cret@h:1/0", Endpoint("h", 1, 0, None, "s@cret")),
        ("redis://app:pw@h:1", Endpoint("h", 1, 0, "app", "pw")),
        ("rediss://h:1/0", Endpoint("h", 1, 0, tls=True)),
        ("unix:///run/redis.sock", None),
        ("redis://h:1/0?socket_timeout=3", None),
        ("redis://h:1/cache", None),
        ("redis://h:1/\u00b9", None),  # a digit to str.isdigit(), not to int()
    ],
)
def test_endpoint_from_url(url: str, expected: Endpoint | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="rediss://"):
            Endpoint.from_url(url)
    else:
        assert Endpoint.from_url(url) == expected


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[Redis, PipelinedRedis]]:
    redis = Redis.from_url(redis_url)
    reader = PipelinedRedis(
        Endpoint.from_url(redis_url), timeout=1.0, connect_timeout=0.5, retry_after=0.5
    )
    try:
        yield redis, reader
    finally:
        await reader.aclose()
        await redis.aclose()


@pytest.mark.postgres
async def test_every_caller_gets_its_own_value(pair: tuple[Redis, PipelinedRedis]) -> None:
    redis, reader = pair
    values = {f"k{n}".encode(): os.urandom(n % 300) + b"\r\n$-1\r\n" for n in range(2000)}
    values[b"big"] = os.urandom(3 * 1024 * 1024)  # arrives in many reads
    await redis.mset(values)
    # Connected first: on a loaded machine, 4,000 callers queueing behind the first one's
    # connect can outlast its 0.5 s connect timeout, and this test is about replies.
    assert await reader.get(b"missing") is None
    keys = [*values, b"missing", *values]
    results = await asyncio.gather(*(reader.get(key) for key in keys))
    assert results == [values.get(key) for key in keys]


@pytest.mark.postgres
async def test_commands_of_one_turn_of_the_loop_leave_in_one_write(
    pair: tuple[Redis, PipelinedRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    redis, reader = pair
    await redis.set(b"k", b"v")
    assert await reader.get(b"k") == b"v"  # connected
    writes: list[bytes] = []
    transport = reader._replies.transport  # type: ignore[union-attr]
    write = transport.write  # type: ignore[union-attr]

    def counted(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    monkeypatch.setattr(transport, "write", counted)
    results = await asyncio.gather(*(reader.get(b"k") for _ in range(50)))
    assert results == [b"v"] * 50
    assert len(writes) == 1
    assert writes[0].count(b"GET") == 50


@pytest.mark.postgres
async def test_the_shared_connection_keeps_itself_alive(
    pair: tuple[Redis, PipelinedRedis],
) -> None:
    _, reader = pair
    assert await reader.get(b"k") is None  # connected
    sock = reader._replies.transport.get_extra_info("socket")  # type: ignore[union-attr]
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


@pytest.mark.postgres
async def test_an_error_reply_fails_one_caller_only(pair: tuple[Redis, PipelinedRedis]) -> None:
    redis, reader = pair
    await redis.rpush("a-list", "x")
    await redis.set("a-string", "y")
    wrong, right = await asyncio.gather(
        reader.get(b"a-list"), reader.get(b"a-string"), return_exceptions=True
    )
    assert isinstance(wrong, RedisUnavailableError)
    assert "WRONGTYPE" in str(wrong)
    assert right == b"y"


@pytest.mark.postgres
async def test_username_password_and_database(redis_url: str) -> None:
    admin = Redis.from_url(redis_url)
    await admin.acl_setuser("reader", enabled=True, passwords=["+p@ss/word"], keys=["*"],
                            commands=["+get", "+select", "+auth"])  # fmt: skip
    try:
        other_db = Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3")
        await other_db.set("there", "yes")
        await other_db.aclose()
        endpoint = Endpoint.from_url(
            redis_url.replace("redis://", "redis://reader:p%40ss%2Fword@").rsplit("/", 1)[0] + "/3"
        )
        assert endpoint is not None
        assert endpoint.password == "p@ss/word"
        reader = PipelinedRedis(endpoint)
        assert await reader.get(b"there") == b"yes"
        await reader.aclose()
        wrong = PipelinedRedis(Endpoint(endpoint.host, endpoint.port, 3, "reader", "nope"))
        with pytest.raises(RedisUnavailableError):
            await wrong.get(b"there")
        await wrong.aclose()
    finally:
        await admin.acl_deluser("reader")
        await admin.aclose()


@pytest.mark.postgres
async def test_redis_down_fails_fast_then_recovers(
    redis_server: RedisServer, redis_url: str
) -> None:
    async def put(value: str) -> None:
        client = Redis.from_url(redis_url)
        await client.set("k", value)
        await client.aclose()

    endpoint = Endpoint.from_url(redis_url)
    assert endpoint is not None
    reader = PipelinedRedis(endpoint, timeout=1.0, connect_timeout=0.5, retry_after=0.5)
    await put("v")
    assert await reader.get(b"k") == b"v"
    redis_server.stop()
    try:
        with pytest.raises(RedisUnavailableError):
            await reader.get(b"k")  # the connection is gone
        with pytest.raises(RedisUnavailableError, match="cannot connect"):
            await reader.get(b"k")  # reconnecting is refused
        with pytest.raises(RedisUnavailableError, match="a moment ago"):
            await reader.get(b"k")  # and not retried until retry_after has passed
    finally:
        redis_server.start()
    await put("v2")
    await asyncio.sleep(reader.retry_after)
    assert await reader.get(b"k") == b"v2"
    await reader.aclose()


async def _black_hole() -> tuple[asyncio.Server, int]:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass
        finally:
            writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_silent_server_fails_every_waiting_caller_within_the_timeout() -> None:
    server, port = await _black_hole()
    reader = PipelinedRedis(Endpoint("127.0.0.1", port), timeout=0.4)
    try:
        # Without the watchdog these would wait forever; the outer timeout only stops a hang.
        async with asyncio.timeout(60):
            results = await asyncio.gather(
                *(reader.get(b"k%d" % n) for n in range(50)), return_exceptions=True
            )
    finally:
        await reader.aclose()
        server.close()
        await server.wait_closed()
    assert all(isinstance(result, RedisUnavailableError) for result in results)
    assert "no reply from Redis within 0.4 s" in str(results[0])


async def test_a_cancelled_caller_does_not_shift_the_replies() -> None:
    # A scripted server: answers each GET with the key's name, but only when told to.
    release = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                if line.startswith(b"$") and line != b"$3\r\n":
                    key = (await reader.readline()).strip()
                    await release.wait()
                    writer.write(b"$%d\r\n%s\r\n" % (len(key), key))
                    await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    reader = PipelinedRedis(Endpoint("127.0.0.1", server.sockets[0].getsockname()[1]))
    try:
        first = asyncio.create_task(reader.get(b"first"))
        second = asyncio.create_task(reader.get(b"second"))
        await asyncio.sleep(0.05)
        first.cancel()
        release.set()
        assert await second == b"second"
        assert await reader.get(b"third") == b"third"
        assert first.cancelled()
    finally:
        await reader.aclose()
        server.close()
        await server.wait_closed()


@pytest.mark.postgres
async def test_the_cache_reads_through_it(pair: tuple[Redis, PipelinedRedis]) -> None:
    _, reader = pair
    cache = RedisCache(reader, ttl_seconds=60, prefix="p:")
    entry = CachedResponse(version=3, etag='"3"', body=b'{"id": 1}')
    await cache.put("items:1", entry)
    assert await cache.get("items:1") == entry
    await cache.invalidate("items:1", 4)
    assert await cache.get("items:1") is None
    await reader.aclose()
    reader.endpoint = Endpoint("127.0.0.1", 1)  # nothing listens there: a miss, not an error
    assert await cache.get("items:1") is None
