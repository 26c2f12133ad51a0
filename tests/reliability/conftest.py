"""The local stack, once for the package, with fault-injecting proxies before Postgres and Redis.

Every service process (the replicas, the worker, the migrations) reaches Postgres and Redis
through a :class:`FaultProxy`, so a test can take either away, slow it down or partition it,
and put it back. A test that injects a fault recovers it and waits for every replica to be
ready again before the next test runs (``healthy``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from daemons import DaemonUnavailableError
from stack import Stack

from tests.eventually import eventually
from tests.reliability.faultproxy import FaultProxy
from tests.servers import unavailable

# Short timeouts, so that faults show within seconds; the behaviour is the production one.
STACK_ENV = {
    "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "DB_POOL_TIMEOUT_SECONDS": "2",
    "DB_COMMAND_TIMEOUT_SECONDS": "3",
    "DB_STATEMENT_TIMEOUT_MS": "2000",
    "SHUTDOWN_DELAY_SECONDS": "1",
    "GRACEFUL_SHUTDOWN_SECONDS": "10",
    "WORKER_POLL_SECONDS": "0.2",
}
READY_WITHIN_SECONDS = 30.0


@dataclass
class FaultyStack:
    """The running stack and the proxies in front of its Postgres and Redis."""

    stack: Stack
    postgres: FaultProxy
    redis: FaultProxy

    async def restart(self, name: str) -> None:
        """Restart one child (``items-1``, ``worker`` ...) without blocking the event loop."""
        await asyncio.to_thread(self.stack.restart, name)

    def auth(self) -> dict[str, str]:
        """The header a write needs."""
        return {"Authorization": f"Bearer {self.stack.api_key}"}

    def replica_ports(self) -> list[int]:
        """Every API replica's port, and the worker's."""
        ports = [port for ports in self.stack.upstreams.values() for port in ports]
        return [*ports, self.stack.worker_port]

    def recover(self) -> None:
        """Take every fault away."""
        self.postgres.recover()
        self.redis.recover()


@pytest.fixture(scope="package")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyStack]:
    directory: Path = tmp_path_factory.mktemp("stack")
    proxies: dict[str, FaultProxy] = {}

    def through_proxy(dependency: str, port: int) -> int:
        proxy = FaultProxy(port, name=f"{dependency}-proxy")
        proxy.start()
        proxies[dependency] = proxy
        return proxy.port

    running = Stack(directory, env=dict(STACK_ENV), dependency_port=through_proxy)
    try:
        try:
            running.start()
        except DaemonUnavailableError as error:
            running.stop()
            unavailable(error)
        yield FaultyStack(running, proxies["postgres"], proxies["redis"])
    finally:
        running.stop()
        for proxy in proxies.values():
            proxy.close()


@pytest.fixture(scope="package")
def stack(faulty: FaultyStack) -> Stack:
    """The package's stack itself (its dependencies reached through the proxies)."""
    return faulty.stack


@pytest.fixture
async def healthy(faulty: FaultyStack) -> AsyncIterator[FaultyStack]:
    """The stack with every fault recovered and every process ready, before and after a test."""
    faulty.recover()
    await wait_until_ready(faulty)
    yield faulty
    faulty.recover()
    await wait_until_ready(faulty)


async def wait_until_ready(faulty: FaultyStack) -> None:
    """Wait until every replica and the worker answer ``/readyz`` with 200."""
    not_ready: dict[int, str] = {}
    async with httpx.AsyncClient(timeout=5) as client:

        async def all_ready() -> bool:
            not_ready.clear()
            for port in faulty.replica_ports():
                try:
                    answer = await client.get(f"http://127.0.0.1:{port}/readyz")
                except httpx.TransportError as error:
                    not_ready[port] = repr(error)
                else:
                    if answer.status_code != 200:
                        not_ready[port] = answer.text
            return not not_ready

        await eventually(all_ready, within=READY_WITHIN_SECONDS, what=lambda: f"{not_ready}")
