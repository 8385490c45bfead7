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
from server.netnames import canonical_host

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses the name resolves to, as strings. Injected in tests.
Resolver = Callable[[str, int], Awaitable[list[str]]]

CLOUD_METADATA = ipaddress.ip_address("169.254.169.254")
# Cloud metadata and platform endpoints: credentials live behind them, so they are refused even when an
# allow-list entry (a host name or a network) would let their address through. Some look public (Azure's
# WireServer 168.63.129.16), so "not private" is no protection for them.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(text) for text in (
    "169.254.169.254",  # AWS, GCP, Azure IMDS, OpenStack, DigitalOcean, Oracle
    "169.254.170.2",  # AWS ECS task credentials
    "169.254.170.23",  # AWS EKS pod identity
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "fd00:ec2::23",  # AWS EKS pod identity over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure WireServer / platform
    "192.0.0.192",  # Oracle Cloud (classic)
))
# Ranges Python's ipaddress (3.11) still calls global: deprecated site-local (RFC 3879), the IPv6 documentation
# range added in 2024 (RFC 9637).
_NOT_PUBLIC_V6 = (
    (ipaddress.ip_network("fec0::/10"), "a site-local IPv6 address"),
    (ipaddress.ip_network("3fff::/20"), "a documentation address"),
)
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_metadata(address: IPAddress) -> bool:
    """A cloud metadata address, also when embedded in an IPv6 one (mapped, 6to4, Teredo, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(int(address))  # without a %scope, which equality would compare
        embedded = _embedded_v4(address)
        if embedded is not None and embedded in METADATA_ADDRESSES:
            return True
    return address in METADATA_ADDRESSES


def forbidden_reason(address: IPAddress) -> str | None:
    """Why a fetch must not connect to this address, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address"
        if address.sixtofour is not None or address.teredo is not None or any(address in n for n in _NAT64):
            return "an IPv6 address that embeds an IPv4 address"
        if address.scope_id:
            return "a scoped (link-local) IPv6 address"
    if is_metadata(address):
        return "the cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        for network, why in _NOT_PUBLIC_V6:
            if address in network:
                return why
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
            wildcard = entry.startswith("*.")
            label = canonical_host(entry[2:] if wildcard else entry)  # Unicode names as the fetcher sends them
            if not _HOST_NAME.fullmatch(label):
                raise ValueError(f"image_fetch_allowlist entry {raw!r} is neither a network nor a host name")
            hosts.add(("*." if wildcard else "") + label)
        return cls(networks=tuple(networks), hosts=frozenset(hosts))

    def host_allowed(self, host: str) -> bool:
        name = canonical_host(host)
        if name in self.hosts:
            return True
        return any(entry.startswith("*.") and name.endswith(entry[1:]) for entry in self.hosts)

    def check(self, address: IPAddress, host: str) -> None:
        """Raise ``image_url_forbidden`` unless this address may be fetched for this host.

        The allow-list opens private and loopback addresses, never the metadata ones: a name on the list can
        be made to resolve anywhere by whoever controls its DNS, and no image lives at a metadata address.
        """
        reason = forbidden_reason(address)
        allowed = self.host_allowed(host) or any(address in net for net in self.networks)
        if reason is None or (allowed and not is_metadata(address)):
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
