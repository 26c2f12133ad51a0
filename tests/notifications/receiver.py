"""A real HTTP webhook receiver and a real SMTP server, on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

import uvicorn
from aiosmtpd.controller import Controller
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every request; answers with ``statuses`` in turn (the last one repeats)."""

    port: int
    statuses: list[int] = field(default_factory=lambda: [200])
    delay_seconds: float = 0.0
    requests: list[Received] = field(default_factory=list)
    redirect_to: str | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, request: Request) -> Response:
        self.requests.append(
            Received(request.url.path, dict(request.headers), await request.body())
        )
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if self.redirect_to and request.url.path == "/redirect":
            return Response(status_code=307, headers={"Location": self.redirect_to})
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return Response(status_code=status)

    def deliveries(self) -> set[str]:
        return {r.headers["x-regatta-delivery"] for r in self.requests}


@contextlib.asynccontextmanager
async def run_receiver(**options: Any) -> AsyncIterator[Receiver]:
    receiver = Receiver(port=free_port(), **options)
    app = Starlette(routes=[Route("/{path:path}", receiver.handle, methods=["POST", "GET"])])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=receiver.port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 -- uvicorn offers a flag, not an event
        await asyncio.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task


class Mailbox:
    """An aiosmtpd handler that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(  # noqa: N802 -- the aiosmtpd handler protocol
        self,
        server: object,  # noqa: ARG002
        session: object,  # noqa: ARG002
        envelope: Any,
    ) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@contextlib.contextmanager
def run_smtp() -> Any:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, mailbox
    finally:
        controller.stop()
