"""One canonical form for host names, wherever a name is compared, resolved, sent or checked.

A name reaches the server in several spellings: a ``Host`` header (``LocalHost.:8000``, ``[::1]:8000``), an
``Origin``, a URL with a Unicode name (``faß.de``), an allow-list entry. Unicode names have two incompatible
ASCII encodings (IDNA 2003, which the OS resolver and Python's ``ssl`` apply, maps ``faß.de`` to ``fass.de``;
IDNA 2008, which httpx applies for the Host header, to ``xn--fa-hia.de``), so a name must be converted once and
that one ASCII form used for the DNS lookup, the address check, TLS SNI and the Host header alike.
"""

from __future__ import annotations

import ipaddress

import idna


def canonical_host(host: str) -> str:
    """Lower-case ASCII (IDNA 2008 / UTS 46), no trailing dot, IP literals in their standard form, no brackets.

    Text that is not a valid name (``_`` labels, junk) is only lower-cased: it then matches nothing an operator
    wrote in valid form, and the resolver refuses it.
    """
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    name = name.rstrip(".")
    if not name:
        return ""
    if name.isascii():
        name = name.lower()
        if "xn--" not in name:
            return name  # plain ASCII: nothing to map, and labels like "_dmarc" stay as they are
    try:
        return idna.encode(name, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        return name.lower()


def split_host_port(text: str) -> tuple[str, int | None]:
    """``"example.com:8000"`` -> ("example.com", 8000); ``"[::1]:80"`` -> ("::1", 80); bare IPv6 has no port."""
    value = text.strip()
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return value, None
        host, rest = value[1:end], value[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, int(port) if port.isdigit() else None
    return value, None


def host_header(host: str, port: int | None) -> str:
    """The ``Host`` header for a canonical host: IPv6 literals in brackets, the port when it is not the default."""
    name = f"[{host}]" if ":" in host else host
    return name if port is None else f"{name}:{port}"
