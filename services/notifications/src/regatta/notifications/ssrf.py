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
        """Raise BlockedAddressError unless ``address`` is public or explicitly allowed.

        An IPv6 address that carries an IPv4 address (mapped, translated, compatible, NAT64,
        6to4, Teredo) is judged by the IPv4 address it reaches.
        """
        if isinstance(address, ipaddress.IPv6Address):
            embedded = embedded_ipv4(address)
            if embedded:
                for inner in embedded:
                    self.check(inner)
                return
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


_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated, still routed by some stacks
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215
# Where RFC 6052 puts the IPv4 address for each prefix length (bits 64-71 are skipped).
_RFC6052_PREFIX_LENGTHS = (48, 56, 64, 96)


def _rfc6052(value: int, prefix_length: int) -> ipaddress.IPv4Address | None:
    # The IPv4 address a NAT64 prefix of this length embeds, if the address is well formed for
    # it: bits 64-71 (the "u" octet) and every bit after the IPv4 address are zero.
    bits = f"{value:0128b}"
    if "1" in bits[64:72]:
        return None
    payload = bits[prefix_length:64] + bits[max(72, prefix_length) :]
    if "1" in payload[32:]:
        return None
    return ipaddress.IPv4Address(int(payload[:32], 2))


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address ``address`` may lead to, or [] for a plain IPv6 address."""
    value = int(address)
    low = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if address in _IPV4_MAPPED or address in _IPV4_TRANSLATED or address in _NAT64_WELL_KNOWN:
        return [low]
    if address in _IPV4_COMPATIBLE and value > 1:  # not :: nor ::1, which are IPv6's own
        return [low]
    if address in _NAT64_LOCAL_USE:
        # The operator picks the prefix length: judge every well-formed reading.
        readings = (_rfc6052(value, length) for length in _RFC6052_PREFIX_LENGTHS)
        return [reading for reading in readings if reading is not None]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    return []


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
