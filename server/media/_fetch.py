"""Fetch a remote image without letting the URL turn the server against its own network (SSRF).

Per hop: parse the URL (https, or http when the operator allows it), resolve the host once, check every
address (``_netguard``), then connect to a checked address itself: the request goes to ``https://<ip>/...``
with the original name kept in the Host header and as TLS SNI, so the certificate is verified for the name
and no second lookup happens. Redirects are followed by hand, each hop checked again, up to a cap. No proxy
from the environment is used (a proxy would do its own lookup). The body is streamed and abandoned as soon
as it passes the byte limit; connect/read timeouts apply per step and one deadline bounds the whole fetch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from dataclasses import dataclass

import httpx

from server.config import Settings
from server.errors import ImageError
from server.media._netguard import AddressPolicy, IPAddress, Resolver, resolve_checked, system_resolve
from server.netnames import canonical_host, host_header

_REDIRECTS = {301, 302, 303, 307, 308}
_USER_AGENT = "mistral-small-server-image-fetch/1"


@dataclass(frozen=True)
class FetchedImage:
    data: bytes
    content_type: str | None
    url: str  # after redirects


def failed(message: str) -> ImageError:
    return ImageError(message, code="image_fetch_failed", param="image_url")


def forbidden(message: str) -> ImageError:
    return ImageError(message, code="image_url_forbidden", param="image_url")


class SafeFetcher:
    def __init__(
        self,
        *,
        policy: AddressPolicy | None = None,
        allow_http: bool = False,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 10.0,
        total_timeout_s: float = 30.0,
        max_redirects: int = 3,
        resolver: Resolver = system_resolve,
        ssl_context: ssl.SSLContext | None = None,
        transport: httpx.AsyncBaseTransport | None = None,  # tests only: replaces the network
    ) -> None:
        self.policy = policy or AddressPolicy()
        self.allow_http = allow_http
        self.timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s, pool=1.0)
        self.total_timeout_s = total_timeout_s
        self.max_redirects = max_redirects
        self.resolver = resolver
        self._ssl_context = ssl_context
        self._transport = transport

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> SafeFetcher:
        options: dict[str, object] = {
            "policy": AddressPolicy.from_entries(settings.image_fetch_allowlist),
            "allow_http": settings.allow_http,
            "connect_timeout_s": settings.image_fetch_connect_timeout_s,
            "read_timeout_s": settings.image_fetch_read_timeout_s,
            "total_timeout_s": settings.image_fetch_total_timeout_s,
            "max_redirects": settings.image_fetch_max_redirects,
        }
        options.update(overrides)
        return cls(**options)  # type: ignore[arg-type]

    def check_url(self, url: str) -> httpx.URL:
        """Parse and vet a URL's form (scheme, host); addresses are checked later, per hop."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise forbidden("image URL is not a valid URL") from exc
        scheme = parsed.scheme.lower()
        if scheme == "http" and not self.allow_http:
            raise forbidden("plain http:// image URLs are not accepted by this server; use https://")
        if scheme not in ("https", "http"):
            raise forbidden(f"image URL scheme {scheme or '(none)'!r} is not accepted")
        if not parsed.host:
            raise forbidden("image URL has no host")
        if parsed.userinfo:
            raise forbidden("image URLs with credentials (user:password@) are not accepted")
        return parsed

    async def fetch(self, url: str, *, max_bytes: int) -> FetchedImage:
        try:
            async with asyncio.timeout(self.total_timeout_s):
                return await self._fetch(url, max_bytes)
        except TimeoutError as exc:
            raise failed(f"fetching the image took longer than {self.total_timeout_s:g} s") from exc

    async def _fetch(self, url: str, max_bytes: int) -> FetchedImage:
        current = self.check_url(url)
        for hop in range(self.max_redirects + 1):
            port = current.port or (443 if current.scheme == "https" else 80)
            addresses = await resolve_checked(_ascii_host(current), port, self.policy, self.resolver)
            result = await self._get(current, addresses, max_bytes)
            if isinstance(result, FetchedImage):
                return result
            if hop == self.max_redirects:
                break
            current = self.check_url(str(current.join(result)))
        raise failed(f"image URL redirected more than {self.max_redirects} times")

    async def _get(self, url: httpx.URL, addresses: list[IPAddress], max_bytes: int) -> FetchedImage | str:
        """GET from the first checked address that accepts a connection: the image, or a redirect target."""
        last_error: Exception | None = None
        async with self._client() as client:
            for address in addresses:
                request = self._pinned_request(client, url, address)
                try:
                    response = await client.send(request, stream=True)
                except httpx.ConnectError as exc:
                    last_error = exc
                    continue
                except httpx.TimeoutException as exc:
                    raise failed(f"timed out talking to {url.host}") from exc
                except httpx.HTTPError as exc:
                    raise failed(f"could not fetch the image from {url.host}: {type(exc).__name__}") from exc
                try:
                    return await self._read(response, url, max_bytes)
                finally:
                    await response.aclose()
        raise failed(f"could not connect to {url.host}") from last_error

    def _pinned_request(self, client: httpx.AsyncClient, url: httpx.URL, address: IPAddress) -> httpx.Request:
        pinned = url.copy_with(host=str(address))
        name = _ascii_host(url)  # the one form the lookup, the check, SNI and Host all use
        extensions: dict[str, object] = {}
        if url.scheme == "https" and not _is_ip_literal(name):
            extensions["sni_hostname"] = name  # TLS: SNI and certificate check for the name
        headers = {"Host": host_header(name, url.port), "Accept": "image/*", "Accept-Encoding": "identity",
                   "User-Agent": _USER_AGENT}
        return client.build_request("GET", pinned, headers=headers, extensions=extensions)

    async def _read(self, response: httpx.Response, url: httpx.URL, max_bytes: int) -> FetchedImage | str:
        if response.status_code in _REDIRECTS:
            location = response.headers.get("location")
            if not location:
                raise failed(f"{url.host} answered {response.status_code} without a Location")
            return location
        if response.status_code != 200:
            raise failed(f"{url.host} answered HTTP {response.status_code}")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise failed(f"{url.host} sent a compressed ({encoding}) body; images must be sent as they are")
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
            raise too_large(int(declared), max_bytes)
        body = bytearray()
        try:
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > max_bytes:
                    raise too_large(None, max_bytes)
        except httpx.TimeoutException as exc:
            raise failed(f"timed out reading the image from {url.host}") from exc
        except httpx.HTTPError as exc:
            raise failed(f"the connection to {url.host} failed while reading: {type(exc).__name__}") from exc
        return FetchedImage(data=bytes(body), content_type=response.headers.get("content-type"), url=str(url))

    def _client(self) -> httpx.AsyncClient:
        # One client per fetch, no keep-alive: a pooled connection keyed by IP must never carry another name.
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()  # once per fetcher: loading CAs costs milliseconds
        transport = self._transport or httpx.AsyncHTTPTransport(
            verify=self._ssl_context,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
            retries=0,
        )
        return httpx.AsyncClient(transport=transport, timeout=self.timeout, trust_env=False, follow_redirects=False)


def too_large(size: int | None, max_bytes: int) -> ImageError:
    what = f"{size} bytes" if size is not None else "larger than the limit"
    message = f"remote image is {what}; the limit is {max_bytes} bytes"
    return ImageError(message, code="image_too_large", status_code=413)


def _ascii_host(url: httpx.URL) -> str:
    """httpx's IDNA 2008 encoding of the name (``raw_host``), canonical: never the Unicode ``url.host``."""
    return canonical_host(url.raw_host.decode("ascii"))


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
