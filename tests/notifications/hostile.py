"""Hostile webhook receivers on raw sockets: a reply too big to read, and replies that drip."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tests.notifications.receiver import free_port

CHUNK = 64 * 1024


@dataclass
class HostileReceiver:
    """Answers every request the same hostile way, and counts what it managed to send.

    ``mode``: ``"huge"`` declares ``size`` bytes and streams them as fast as the client reads;
    ``"drip-body"`` declares ``Content-Length: 12`` and sends one byte per ``interval``;
    ``"drip-headers"`` sends a status line, then one header byte per ``interval``, forever.
    """

    mode: str
    port: int
    size: int = 0
    interval: float = 1.0
    sent: int = 0  # body bytes written (huge) or bytes dripped
    connections: int = 0
    open_connections: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    def url(self, path: str = "/hook") -> str:
        """Where to send a webhook."""
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one request, answer it badly until the client gives up."""
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.connections += 1
        self.connected.set()
        self.open_connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            await reader.readexactly(length)
            await self._answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client left, or the receiver is shutting down: either way, done
        finally:
            self.open_connections -= 1
            self.closed.set()
            self.handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        if self.mode == "huge":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
            block = b"x" * CHUNK
            while self.sent < self.size:
                writer.write(block)
                await writer.drain()
                self.sent += len(block)
        elif self.mode == "drip-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n")
            await writer.drain()
            for _ in range(12):
                await asyncio.sleep(self.interval)
                writer.write(b"x")
                await writer.drain()
                self.sent += 1
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            await writer.drain()
            while True:
                await asyncio.sleep(self.interval)
                writer.write(b"x")
                await writer.drain()
                self.sent += 1


@contextlib.asynccontextmanager
async def run_hostile(mode: str, **options: float) -> AsyncIterator[HostileReceiver]:
    """A hostile receiver on a free loopback port."""
    receiver = HostileReceiver(mode=mode, port=free_port(), **options)  # type: ignore[arg-type]
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", receiver.port)
    try:
        yield receiver
    finally:
        server.close()
        for handler in list(receiver.handlers):
            handler.cancel()
        await asyncio.gather(*receiver.handlers, return_exceptions=True)
        await server.wait_closed()
