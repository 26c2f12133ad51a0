"""The per-request Redis commands over one shared connection: pipelined, no pool, no lock."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

# Keepalives, so that no NAT forgets a quiet connection and a vanished peer is found early.
_KEEPALIVE = (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
_BULK, _SIMPLE, _INTEGER, _ERROR, _ARRAY = (ord(kind) for kind in "$+:-*")
# A decoded reply: bulk and simple strings as bytes, integers as int, nil as None, arrays.
Reply = bytes | int | list["Reply"] | None


class RedisUnavailableError(ConnectionError):
    """Redis could not answer: connection refused, lost, timed out or protocol error."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect: the parts of a ``redis://`` URL this client understands."""

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """The endpoint of a ``redis://`` or ``rediss://`` (TLS) URL; ValueError for others."""
        parts = urlsplit(url)
        path = parts.path.strip("/")
        if (
            parts.scheme not in {"redis", "rediss"}
            or not parts.hostname
            or parts.query
            or (path and not (path.isascii() and path.isdigit()))
        ):
            message = "a Redis URL must be redis://[user:password@]host[:port][/db] or rediss://"
            raise ValueError(message)
        return cls(
            host=parts.hostname,
            port=parts.port or 6379,
            db=int(path or 0),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
        )


class Script:
    """A Lua script and its SHA-1, as EVALSHA names it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest().encode()


def _command(*args: bytes) -> bytes:
    parts = [b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args]
    return b"*%d\r\n" % len(args) + b"".join(parts)


class _Replies(asyncio.Protocol):
    """Parse RESP replies into the futures waiting for them, in order."""

    def __init__(self) -> None:
        self.waiting: deque[tuple[asyncio.Future[Reply], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in _KEEPALIVE:
                if hasattr(socket, option):  # macOS names TCP_KEEPIDLE differently
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)

    def request(self, command: bytes, timeout: float) -> asyncio.Future[Reply]:
        """Queue ``command`` (what this turn of the loop queues is written together); its reply."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self.waiting.append((future, loop.time() + timeout))
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(command)
        return future

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if not self.closed and self.transport is not None:
            self.transport.write(b"".join(outgoing))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisUnavailableError(f"connection to Redis lost: {exc!r}"))

    def fail(self, error: Exception) -> None:
        """Close the connection and fail every waiting reader."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._parse()
        except (RedisUnavailableError, ValueError) as exc:
            self.fail(RedisUnavailableError(f"unexpected reply from Redis: {exc}"))

    def _parse(self) -> None:
        buffer = self._buffer
        start = 0
        while (reply := _read_reply(buffer, start)) is not None:
            value, start = reply
            if not self.waiting:
                raise RedisUnavailableError("a reply nobody asked for")
            future, _ = self.waiting.popleft()
            if future.done():
                continue  # its caller was cancelled; the reply is dropped in order
            if isinstance(value, RedisUnavailableError):
                future.set_exception(value)
            else:
                future.set_result(value)
        del buffer[:start]


def _read_reply(buffer: bytearray, start: int) -> tuple[Reply | RedisUnavailableError, int] | None:
    """The reply at ``start`` and where the next begins; None while it is incomplete."""
    end = buffer.find(b"\r\n", start)
    if end < 0:
        return None
    kind = buffer[start]
    if kind == _BULK:
        return _read_bulk(buffer, int(buffer[start + 1 : end]), end + 2)
    if kind == _SIMPLE:
        return bytes(buffer[start + 1 : end]), end + 2
    if kind == _INTEGER:
        return int(buffer[start + 1 : end]), end + 2
    if kind == _ERROR:  # an error reply fails its caller only
        return RedisUnavailableError(buffer[start + 1 : end].decode(errors="replace")), end + 2
    if kind == _ARRAY:
        return _read_array(buffer, int(buffer[start + 1 : end]), end + 2)
    raise RedisUnavailableError(f"reply type {chr(kind)!r}")


def _read_bulk(buffer: bytearray, length: int, start: int) -> tuple[Reply, int] | None:
    if length < 0:
        return None, start
    stop = start + length
    if len(buffer) < stop + 2:
        return None  # the rest of the string has not arrived yet
    return bytes(buffer[start:stop]), stop + 2


def _read_array(buffer: bytearray, count: int, start: int) -> tuple[Reply, int] | None:
    if count < 0:
        return None, start
    items: list[Reply] = []
    for _ in range(count):
        item = _read_reply(buffer, start)
        if item is None:
            return None
        value, start = item
        if isinstance(value, RedisUnavailableError):
            raise value  # an error inside an array: not a shape any command here returns
        items.append(value)
    return items, start


class PipelinedRedis:
    """Commands over one shared connection, pipelined, replies matched in order."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = 2.0,
        connect_timeout: float = 2.0,
        retry_after: float = 1.0,
        tracer: Tracer | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.tracer = tracer or trace.NoOpTracer()
        self._span_attributes: dict[str, str | int] = {
            "db.system": "redis",
            "db.redis.database_index": endpoint.db,
            "net.peer.name": endpoint.host,
            "net.peer.port": endpoint.port,
            "net.transport": "ip_tcp",
        }
        # Awaited after every (re)connect, before any read (cache.py advances its generation).
        self.on_connect: Callable[[], Awaitable[None]] | None = None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry_after = retry_after
        self._replies: _Replies | None = None
        self._connecting = asyncio.Lock()
        self._down_until = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    async def get(self, key: bytes) -> bytes | None:
        """The value under ``key`` or None; :class:`RedisUnavailableError` when Redis is not."""
        command = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)
        reply = await self._send("GET", 2, command)
        return reply if isinstance(reply, bytes) else None

    async def execute(self, *args: bytes) -> Reply:
        """Any command whose reply is a string, integer, nil or array; errors raise."""
        return await self._send(args[0].decode(), len(args), _command(*args))

    async def _send(self, name: str, length: int, command: bytes) -> Reply:
        # In the span redis-py's instrumentation makes (arguments elided).
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT)
        if span.is_recording():
            span.set_attributes(self._span_attributes)
            span.set_attribute("db.statement", name + " ?" * (length - 1))
            span.set_attribute("db.redis.args_length", length)
        try:
            replies = self._replies
            if replies is None or replies.closed:
                replies = await self._connect()
            return await replies.request(command, self.timeout)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            span.end()

    async def run_script(self, script: Script, keys: list[bytes], args: list[bytes]) -> Reply:
        """EVALSHA, loading the script first if this Redis does not know it yet."""
        counts = [str(len(keys)).encode()]
        try:
            return await self.execute(b"EVALSHA", script.sha, *counts, *keys, *args)
        except RedisUnavailableError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.execute(b"EVAL", script.source, *counts, *keys, *args)

    async def aclose(self) -> None:
        """Close the connection; waiting readers fail."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._replies is not None:
            self._replies.fail(RedisUnavailableError("client closed"))
            self._replies = None

    async def _connect(self) -> _Replies:
        if time.monotonic() < self._down_until:
            raise RedisUnavailableError("Redis was unreachable a moment ago")
        async with self._connecting:
            if self._replies is not None and not self._replies.closed:
                return self._replies  # another caller connected meanwhile
            try:
                async with asyncio.timeout(self.connect_timeout):
                    replies = await self._open()
            except (OSError, TimeoutError, RedisUnavailableError) as exc:
                self._down_until = time.monotonic() + self.retry_after
                raise RedisUnavailableError(f"cannot connect to Redis: {exc!r}") from exc
            if self.on_connect is not None:
                try:
                    await self.on_connect()
                except Exception as exc:
                    replies.fail(RedisUnavailableError("connection setup failed"))
                    self._down_until = time.monotonic() + self.retry_after
                    raise RedisUnavailableError(f"cannot set up the connection: {exc!r}") from exc
            self._replies = replies
            self._schedule_watchdog()
            return replies

    async def _open(self) -> _Replies:
        endpoint = self.endpoint
        _, replies = await asyncio.get_running_loop().create_connection(
            _Replies,
            endpoint.host,
            endpoint.port,
            ssl=ssl.create_default_context() if endpoint.tls else None,
        )
        setup: list[bytes] = []
        if endpoint.password is not None:
            auth = [endpoint.username.encode()] if endpoint.username else []
            setup.append(_command(b"AUTH", *auth, endpoint.password.encode()))
        if endpoint.db:
            setup.append(_command(b"SELECT", str(endpoint.db).encode()))
        try:
            await asyncio.gather(*(replies.request(each, self.connect_timeout) for each in setup))
        except RedisUnavailableError:
            replies.fail(RedisUnavailableError("setup refused"))
            raise
        return replies

    def _schedule_watchdog(self) -> None:
        if self._watchdog is None:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_later(self.timeout / 4, self._check_overdue)

    def _check_overdue(self) -> None:
        # The oldest waiting reader is first in line: if it is overdue, the connection is stuck.
        self._watchdog = None
        replies = self._replies
        if replies is None or replies.closed:
            return
        if replies.waiting and replies.waiting[0][1] < asyncio.get_running_loop().time():
            replies.fail(RedisUnavailableError(f"no reply from Redis within {self.timeout} s"))
            self._replies = None
        else:
            self._schedule_watchdog()
