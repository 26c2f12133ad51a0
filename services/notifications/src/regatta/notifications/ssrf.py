"""Webhooks must not become a way into the cluster: address checks on every connection.

A URL whose host is a literal private, loopback or link-local address is refused when it is
submitted (422). A host *name* is resolved when a delivery connects, every time, and the
connection goes to the very address that was checked, so a name that resolves to a public
address when submitted and to 10.0.0.5 later (DNS rebinding) cannot reach inside. Networks can
be allowed explicitly; link-local (cloud metadata at 169.254.169.254) never.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NEVER = [ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10")]


class BlockedAddressError(Exception):
    """A webhook tried to reach an address it may not."""


class AddressPolicy:
    """Which addresses webhooks may reach."""

    def __init__(self, allowed: Iterable[Network] = ()) -> None:
        self.allowed = list(allowed)

    def check(self, address: Address) -> None:
        """Raise BlockedAddressError unless ``address`` is public or explicitly allowed."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in _NEVER) or address.is_link_local:
            raise BlockedAddressError(f"{address} is link-local and never reachable")
        if address.is_global and not address.is_multicast:
            return
        if any(address in network for network in self.allowed):
            return
        raise BlockedAddressError(f"{address} is not a public address")

    def check_literal_host(self, host: str) -> None:
        """Raise for a URL host that is an IP literal this policy refuses (names pass here)."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            if host.lower() in {"localhost", "localhost.localdomain"} or host.lower().endswith(
                ".localhost"
            ):
                self.check(ipaddress.ip_address("127.0.0.1"))
            return
        self.check(address)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, checks, then connects to the checked address."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 -- the httpcore interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to the first resolved address the policy allows (or refuse)."""
        addresses = await _resolve(host, port)
        for address in addresses:
            self.policy.check(address)  # every address must be acceptable, not just one
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last_error = exc
        raise last_error or httpcore.ConnectError(f"cannot connect to {host}")

    async def connect_unix_socket(
        self,
        path: str,  # noqa: ARG002
        timeout: float | None = None,  # noqa: ARG002, ASYNC109
        socket_options: Iterable[Any] | None = None,  # noqa: ARG002
    ) -> httpcore.AsyncNetworkStream:
        """Webhooks never use Unix sockets."""
        raise BlockedAddressError("unix sockets are not reachable by webhooks")

    async def sleep(self, seconds: float) -> None:
        """Delegate to the default backend."""
        await self._inner.sleep(seconds)


async def _resolve(host: str, port: int) -> Sequence[Address]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    unique: dict[str, Address] = {}
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]
        unique.setdefault(text, ipaddress.ip_address(text))
    if not unique:
        raise httpcore.ConnectError(f"{host} resolves to nothing")
    return list(unique.values())
