"""Which network addresses a remote image fetch may connect to (the SSRF guard's policy).

A URL's host is resolved once; every address it resolves to must be public (or allow-listed), else the fetch
is refused. The fetcher then connects to one of exactly those addresses, so a second DNS answer (rebinding)
cannot redirect the connection. Names never decide on their own: ``localhost``, ``127.1``, ``2130706433``,
``[::ffff:127.0.0.1]`` all resolve to addresses that are checked like any other.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from server.errors import ImageError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses the name resolves to, as strings. Injected in tests.
Resolver = Callable[[str, int], Awaitable[list[str]]]

CLOUD_METADATA = ipaddress.ip_address("169.254.169.254")
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def forbidden_reason(address: IPAddress) -> str | None:
    """Why a fetch must not connect to this address, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address"
        if address.sixtofour is not None or address.teredo is not None or any(address in n for n in _NAT64):
            return "an IPv6 address that embeds an IPv4 address"
        if address.scope_id:
            return "a scoped (link-local) IPv6 address"
    if address == CLOUD_METADATA:
        return "the cloud metadata address"
    checks = (
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "a non-public address"),  # e.g. 100.64.0.0/10 (carrier-grade NAT)
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses are allowed; anything else only when an allow-list entry names its host or network."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)  # exact names, or "*.example.com" suffixes

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> AddressPolicy:
        """Parse allow-list entries: CIDRs or bare addresses (``10.0.0.0/8``, ``::1``) and host names."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = entry.rstrip(".")
            label = name[2:] if name.startswith("*.") else name
            if not _HOST_NAME.fullmatch(label):
                raise ValueError(f"image_fetch_allowlist entry {raw!r} is neither a network nor a host name")
            hosts.add(name)
        return cls(networks=tuple(networks), hosts=frozenset(hosts))

    def host_allowed(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        if name in self.hosts:
            return True
        return any(entry.startswith("*.") and name.endswith(entry[1:]) for entry in self.hosts)

    def check(self, address: IPAddress, host: str) -> None:
        """Raise ``image_url_forbidden`` unless this address may be fetched for this host."""
        reason = forbidden_reason(address)
        if reason is None or self.host_allowed(host) or any(address in net for net in self.networks):
            return
        raise ImageError(
            f"image URL host {host!r} resolves to {reason}; remote images must be on public addresses",
            code="image_url_forbidden",
            param="image_url",
        )


async def system_resolve(host: str, port: int) -> list[str]:
    """The OS resolver (getaddrinfo), run off the event loop."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


async def resolve_checked(host: str, port: int, policy: AddressPolicy, resolver: Resolver) -> list[IPAddress]:
    """Resolve ``host`` once and check every answer: one forbidden address refuses the whole name."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        answers = [literal]
    else:
        try:
            raw = await resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise ImageError(
                f"image URL host {host!r} could not be resolved", code="image_fetch_failed", param="image_url"
            ) from exc
        answers = []
        for text in raw:
            try:
                answers.append(ipaddress.ip_address(text))
            except ValueError:
                # a scoped IPv6 answer ("fe80::1%eth0") or junk: never connect to what we cannot check
                raise ImageError(
                    f"image URL host {host!r} resolves to an address that cannot be checked",
                    code="image_url_forbidden",
                    param="image_url",
                ) from None
    if not answers:
        raise ImageError(f"image URL host {host!r} has no address", code="image_fetch_failed", param="image_url")
    for address in answers:
        policy.check(address, host)
    return list(dict.fromkeys(answers))  # unique, resolver order kept
