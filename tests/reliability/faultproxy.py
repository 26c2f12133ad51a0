"""A TCP proxy that injects faults between the services and Postgres or Redis.

It runs an asyncio loop in a thread of the test process and forwards one loopback port to one
server. On demand it adds latency, cuts every connection, refuses connections (the server is
"down"), black-holes traffic (connections open, nothing arrives: a network partition),
strands the open connections (a firewall forgot them: their bytes vanish, new connections
pass), and recovers. Black-holed bytes are held, not dropped, so connections that outlive a
short partition carry on like TCP does once the network heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, Final, Self, TypeVar

HOST: Final = "127.0.0.1"
CHUNK: Final = 65536
# The tail of each client stream is kept, so a test can tell a polite goodbye (Postgres's
# Terminate message, say) from a dropped socket.
TAIL_BYTES: Final = 16
CONTROL_TIMEOUT: Final = 10.0

T = TypeVar("T")


class Mode(Enum):
    """What the proxy does with traffic right now."""

    FORWARD = "forward"
    REFUSE = "refuse"  # the server is down: connections are refused, open ones were cut
    BLACKHOLE = "blackhole"  # a partition: connections stay open, nothing gets through


@dataclass
class Ended:
    """How one proxied connection ended."""

    client_port: int
    # The last bytes the client sent before it closed its side, or None if the client did
    # not close it (the server did, or the proxy cut it).
    client_farewell: bytes | None


@dataclass(eq=False)
class _Link:
    client_port: int
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tail: bytes = b""
    client_closed: bool = False
    aborted: bool = False
    stranded: bool = False  # its path is gone: bytes vanish both ways, nobody is told

    def abort(self) -> None:
        self.aborted = True
        for writer in (self.client, self.server):
            if writer is not None:
                _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST, as a crashed peer or a dropped route would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Forward ``127.0.0.1:port`` to ``target_port``; switch faults on and off at will."""

    def __init__(self, target_port: int, *, name: str = "proxy") -> None:
        self.name = name
        self.target_port = target_port
        self.port = 0
        self.latency_seconds = 0.0
        self.mode = Mode.FORWARD
        self.accepted = 0
        self.ended: list[Ended] = []
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- control, from any thread -------------------------------------------------------------

    def start(self) -> None:
        """Listen on a free port (kept for the proxy's lifetime) and start forwarding."""
        self._thread.start()
        self._call(self._listen)

    def close(self) -> None:
        """Cut everything and stop the proxy's thread."""
        if not self._thread.is_alive():
            return
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONTROL_TIMEOUT)
        self._loop.close()

    def delay(self, seconds: float) -> None:
        """Hold every chunk ``seconds`` before passing it on, both ways (0 removes the delay)."""
        self.latency_seconds = seconds

    def refuse(self) -> None:
        """Take the server down: cut every connection and refuse new ones until ``recover``."""
        self._call(self._refuse)

    def cut(self) -> None:
        """Reset every open connection; new ones are accepted as before."""
        self._call(self._cut)

    def strand(self) -> None:
        """Lose the path of every open connection silently (a firewall forgot them); new ones
        are forwarded as before."""
        self._call(self._strand)

    def blackhole(self) -> None:
        """Partition: connections are accepted and kept open, but no byte gets through."""
        self._call(self._blackhole)

    def recover(self) -> None:
        """Forward again, without latency; bytes held during a black hole flow on."""
        self.latency_seconds = 0.0
        self._call(self._recover)

    @property
    def open_connections(self) -> int:
        """Connections being proxied right now."""
        return len(self._links)

    # -- inside the proxy's loop --------------------------------------------------------------

    def _call(self, action: Callable[[], Coroutine[Any, Any, T]]) -> T:
        future = asyncio.run_coroutine_threadsafe(action(), self._loop)
        return future.result(CONTROL_TIMEOUT)

    async def _listen(self) -> None:
        self._flowing.set()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._handle, sock=sock)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._flowing.set()
        await self._cut()
        for _ in range(100):  # let the connections' tasks see the cut and finish
            if not self._links:
                break
            await asyncio.sleep(0.01)

    async def _cut(self) -> None:
        for link in list(self._links):
            link.abort()

    async def _refuse(self) -> None:
        self.mode = Mode.REFUSE
        if self._server is not None:
            # Closing the listener makes the kernel refuse connections, as a dead server's
            # host does; connections still waiting in the backlog are reset.
            self._server.close()
            self._server = None
        self._flowing.set()
        await self._cut()

    async def _strand(self) -> None:
        for link in self._links:
            link.stranded = True

    async def _blackhole(self) -> None:
        self.mode = Mode.BLACKHOLE
        self._flowing.clear()

    async def _recover(self) -> None:
        self.mode = Mode.FORWARD
        if self._server is None:
            await self._listen()
        self._flowing.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(client_port=writer.get_extra_info("peername")[1], client=writer)
        self._links.add(link)
        try:
            if self.mode is Mode.REFUSE:
                link.abort()
                return
            await self._flowing.wait()
            try:
                server_reader, link.server = await asyncio.open_connection(HOST, self.target_port)
            except OSError:
                link.abort()  # the real server is gone: so is this connection
                return
            await asyncio.gather(
                self._pump(reader, link.server, link, from_client=True),
                self._pump(server_reader, writer, link, from_client=False),
            )
        finally:
            self._links.discard(link)
            self.ended.append(Ended(link.client_port, link.tail if link.client_closed else None))

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        *,
        from_client: bool,
    ) -> None:
        try:
            while chunk := await reader.read(CHUNK):
                if self.latency_seconds:
                    await asyncio.sleep(self.latency_seconds)
                await self._flowing.wait()
                if link.stranded:
                    continue
                if from_client:
                    link.tail = (link.tail + chunk)[-TAIL_BYTES:]
                writer.write(chunk)
                await writer.drain()
        except OSError:
            link.abort()
            return
        if from_client and not link.aborted:
            link.client_closed = True
        # One side said goodbye: close the other politely; its pump then ends too.
        writer.close()
