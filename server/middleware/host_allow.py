"""Refuse requests whose ``Host`` is not an allowed name (DNS rebinding), with 400 ``host_not_allowed``.

A web page can point a name it controls at 127.0.0.1 and then talk to this server as "same origin", with no
key needed when none is configured. Its requests still carry that name in ``Host``, so only names the
operator expects are served: ``MSSERVE_ALLOWED_HOSTS``, or by default, when bound to a loopback address, the
loopback names (localhost, 127.0.0.1, [::1]) with any port. Bound elsewhere the default is off: Kubernetes
probes and load balancers send the pod's IP or names this process cannot know. ``*`` turns the check off.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from server.config import Settings
from server.errors import InvalidRequestError
from server.middleware._respond import send_error
from server.netnames import canonical_host, split_host_port

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback_bind(host: str) -> bool:
    if canonical_host(host) == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The allowed names (canonical form; ``*.`` entries are suffixes), or None when the check is off."""
    entries = settings.allowed_hosts
    if entries is None:
        if not is_loopback_bind(settings.host):
            return None
        entries = [*LOOPBACK_NAMES, settings.host]
    if "*" in entries:
        return None
    names = set()
    for entry in entries:
        wildcard = entry.strip().startswith("*.")
        host, _ = split_host_port(entry.strip()[2:] if wildcard else entry.strip())
        names.add(("*." if wildcard else "") + canonical_host(host))
    return frozenset(names)


def host_matches(host: str, allowed: frozenset[str]) -> bool:
    return host in allowed or any(entry.startswith("*.") and host.endswith(entry[1:]) for entry in allowed)


class HostAllowListMiddleware:
    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allowed is None:
            await self.app(scope, receive, send)
            return
        raw = next((value for name, value in scope["headers"] if name == b"host"), b"")
        host, _ = split_host_port(raw.decode("latin-1"))
        if host and host_matches(canonical_host(host), self.allowed):
            await self.app(scope, receive, send)
            return
        await send_error(
            send,
            InvalidRequestError(
                f"this server does not answer to the host name {raw.decode('latin-1')[:100]!r}; "
                "MSSERVE_ALLOWED_HOSTS lists the names it answers to",
                code="host_not_allowed",
            ),
        )
