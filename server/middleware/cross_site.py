"""Refuse cross-site browser requests that could change something (403 ``cross_site_request``).

Any web page can make the browser send a "simple" cross-site request, e.g. a form POST of multipart data to
``/v1/captions``, and with no keys configured (the default on 127.0.0.1) nothing else would stop it. Browsers
say where a request comes from; scripts, ``curl -F``, ``msserve caption`` and the SDKs send neither header:

1. GET, HEAD and OPTIONS pass (they change nothing; reading a response cross-site needs CORS, never sent here).
2. ``Sec-Fetch-Site`` (every current browser): ``same-origin`` and ``none`` (typed, bookmarked) pass; anything
   else (``cross-site``, ``same-site``: another port or subdomain) is refused.
3. No ``Sec-Fetch-Site`` but an ``Origin`` (older browsers): it must name this request's own ``Host``.
4. Neither header: not a browser, or one too old to matter: pass.

The decision never looks at the content type: uploads from scripts must keep working. Go's net/http
CrossOriginProtection follows the same steps.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import PermissionDeniedError
from server.middleware._respond import send_error
from server.netnames import canonical_host, split_host_port

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_ORIGIN = frozenset({"same-origin", "none"})


def _authority(host: str, port: int | None, scheme: str) -> tuple[str, int | None]:
    default = {"http": 80, "https": 443}.get(scheme)
    return canonical_host(host), None if port == default else port


def same_origin(origin: str, host_header: str) -> bool:
    """Does ``Origin`` name the host (and port) this request was sent to? ``null`` and junk never do."""
    parsed = urlsplit(origin.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return False
    origin_host, origin_port = split_host_port(parsed.netloc)
    host, port = split_host_port(host_header)
    return _authority(origin_host, origin_port, parsed.scheme) == _authority(host, port, parsed.scheme)


def is_cross_site(method: str, headers: Headers) -> bool:
    if method.upper() in SAFE_METHODS:
        return False
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.strip().lower() not in SAME_ORIGIN
    origin = headers.get("origin")
    if origin is None:
        return False
    return not same_origin(origin, headers.get("host", ""))


class CrossSiteMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_cross_site(scope["method"], Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        await send_error(
            send,
            PermissionDeniedError(
                "cross-site requests from web pages are refused; call the API from your own code or the dashboard",
                code="cross_site_request",
            ),
        )
