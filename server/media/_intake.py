"""Image intake: what a client sent (data URL, https URL, upload) -> a validated ``ImagePart`` the model can use.

The API calls ``intake.budget()`` once per request, then ``await intake.from_url(url, budget)`` for each
``image_url`` part, or ``await intake.from_bytes(data, budget, source="upload", content_type=...)`` for a
multipart upload. Everything that touches the image's bytes (base64, the structure walk, Pillow) runs on the
decode pool's threads; the event loop only awaits. Every refusal is an ``ImageError`` (400/413/415) with a
stable code, or a 429 when the decode pool is full:

    image_invalid_data_url    400  malformed data: URL or base64
    image_url_forbidden       400  scheme not accepted, credentials in URL, host resolves to a non-public address
    image_fetch_failed        400  remote fetch failed: DNS, connect, HTTP status, timeout, too many redirects
    image_empty               400  zero bytes
    image_corrupt             400  a supported format, but truncated or undecodable
    image_too_complex         400  block structure over the caps: metadata blocks, JPEG scans, junk (``_prescan``)
    too_many_images           400  more images than max_images_per_request
    image_too_large           413  bytes per image, total bytes per request, pixels declared or to be decoded
    image_unsupported_format  415  not JPEG/PNG/WebP/GIF/BMP (SVG, PDF, HTML, ...), or a non-image declared type
    image_decoder_busy        429  the decode pool's queue is full
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field, replace

from server.config import Settings
from server.errors import ImageError
from server.media._decode import decode_image, unsupported
from server.media._dns import PooledResolver
from server.media._fetch import SafeFetcher
from server.media._grid import MISTRAL_SMALL_3_1, VisionGrid
from server.media._pool import DecodePool
from server.media._prescan import ScanLimits
from server.types import ImagePart

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
# Declared types that may hold an image we can sniff; anything else (text/html, image/svg+xml, ...) is refused.
_NEUTRAL_TYPES = {"application/octet-stream", "binary/octet-stream", "application/unknown"}
_NOT_RASTER = {"image/svg+xml", "image/svg"}
# The most a data: URL's "data:<type>;<params>;base64," prefix may take in the quick size check on the loop.
_MAX_DATA_URL_PREFIX = 1024


@dataclass
class ImageBudget:
    """Per-request counters: how many images and bytes this request has used so far."""

    max_images: int
    max_total_bytes: int
    images: int = 0
    total_bytes: int = 0
    sizes: list[int] = field(default_factory=list)

    @property
    def remaining_bytes(self) -> int:
        return max(self.max_total_bytes - self.total_bytes, 0)

    def check_room(self) -> None:
        """Refuse one image more before spending anything on it (a fetch, a decode)."""
        if self.images + 1 > self.max_images:
            raise ImageError(
                f"too many images: at most {self.max_images} per request", code="too_many_images", status_code=400
            )

    def charge(self, size: int) -> None:
        self.check_room()
        if self.total_bytes + size > self.max_total_bytes:
            raise ImageError(
                f"images in this request exceed {self.max_total_bytes} bytes in total",
                code="image_too_large",
                status_code=413,
            )
        self.images += 1
        self.total_bytes += size
        self.sizes.append(size)


class ImageIntake:
    """One per app."""

    def __init__(
        self,
        settings: Settings,
        *,
        grid: VisionGrid = MISTRAL_SMALL_3_1,
        fetcher: SafeFetcher | None = None,
        pool: DecodePool | None = None,
        limits: ScanLimits | None = None,
    ) -> None:
        self.settings = settings
        self.grid = grid
        self.fetcher = fetcher or SafeFetcher.from_settings(
            settings,
            resolver=PooledResolver(settings.image_fetch_dns_workers, settings.image_fetch_dns_timeout_s),
        )
        self.pool = pool or DecodePool(
            settings.image_decode_workers, settings.image_decode_queue, retry_after_s=settings.retry_after_s
        )
        self.limits = limits or replace(
            ScanLimits(),
            max_jpeg_scans=settings.image_max_jpeg_scans,
            max_metadata_blocks=settings.image_max_metadata_blocks,
        )

    def budget(self) -> ImageBudget:
        return ImageBudget(self.settings.max_images_per_request, self.settings.max_total_image_bytes)

    async def from_url(self, url: str, budget: ImageBudget) -> ImagePart:
        """An OpenAI ``image_url``: a data: URL, or https:// (http:// when allowed) fetched through the guard."""
        colon = url.find(":", 0, 64)  # not split(): that would copy a data: URL of many MB on the loop
        scheme = url[:colon].strip().lower() if colon >= 0 else ""
        budget.check_room()
        if scheme == "data":
            check_data_url_size(url, self.settings.max_image_bytes)  # before it takes a place in the pool
            return await self.pool.run(self._from_data_url, url, budget)
        if scheme in ("https", "http") and self.settings.image_fetch_enabled:
            limit = min(self.settings.max_image_bytes, budget.remaining_bytes)
            fetched = await self.fetcher.fetch(url, max_bytes=limit)
            return await self.pool.run(self.prepare, fetched.data, budget, source=scheme,
                                       content_type=fetched.content_type)
        accepted = "data:, https:" + (", http:" if self.settings.allow_http else "")
        if not self.settings.image_fetch_enabled:
            accepted = "data:"
        raise ImageError(
            f"image URL scheme {scheme or '(none)'!r} is not accepted; use {accepted} URLs",
            code="image_url_forbidden",
            param="image_url",
        )

    async def from_bytes(
        self, data: bytes, budget: ImageBudget, *, source: str, content_type: str | None = None
    ) -> ImagePart:
        """Raw bytes (a multipart upload): ``content_type`` is the part's declared type, checked, then sniffed."""
        budget.check_room()
        return await self.pool.run(self.prepare, data, budget, source=source, content_type=content_type)

    def prepare(self, data: bytes, budget: ImageBudget, *, source: str, content_type: str | None = None) -> ImagePart:
        """Bytes -> ImagePart on the calling thread: the decode pool's, or a benchmark's."""
        self._admit(data, budget, content_type)
        decoded = decode_image(
            data,
            max_pixels=self.settings.max_image_pixels,
            max_decoded_pixels=self.settings.max_decoded_image_pixels,
            grid=self.grid,
            limits=self.limits,
        )
        return ImagePart(image=decoded.image, mime_type=decoded.mime_type, source=source)

    def _from_data_url(self, url: str, budget: ImageBudget) -> ImagePart:
        mime, data = decode_data_url(url, self.settings.max_image_bytes)  # base64 of up to ~27 MB: not on the loop
        return self.prepare(data, budget, source="data-url", content_type=mime)

    def _admit(self, data: bytes, budget: ImageBudget, content_type: str | None) -> None:
        check_declared_type(content_type)
        if len(data) > self.settings.max_image_bytes:
            raise ImageError(
                f"image is {len(data)} bytes; the limit is {self.settings.max_image_bytes}",
                code="image_too_large",
                status_code=413,
            )
        budget.charge(len(data))



def check_declared_type(content_type: str | None) -> None:
    """Refuse a declared type that cannot be a raster image; image/* mismatches are settled by sniffing."""
    if not content_type:
        return
    mime = content_type.split(";", 1)[0].strip().lower()
    if not mime or mime in _NEUTRAL_TYPES:
        return
    if mime.startswith("image/") and mime not in _NOT_RASTER:
        return
    raise unsupported(f"declared type {mime}")


def check_data_url_size(url: str, max_bytes: int) -> None:
    """Refuse a data: URL whose payload cannot fit ``max_bytes``, by length alone (no decoding)."""
    if len(url) > (max_bytes * 4) // 3 + 4 + _MAX_DATA_URL_PREFIX:
        raise ImageError(f"image is larger than {max_bytes} bytes", code="image_too_large", status_code=413)


def decode_data_url(url: str, max_bytes: int) -> tuple[str | None, bytes]:
    """(declared MIME type or None, payload) of a base64 data: URL."""
    match = _DATA_URL.match(url)
    if not match or not match.group("b64"):
        raise ImageError("image data URL must look like data:image/<type>;base64,<data>", code="image_invalid_data_url")
    payload = url[match.end() :]
    if len(payload) > (max_bytes * 4) // 3 + 4:  # refuse before decoding what cannot fit
        raise ImageError(f"image is larger than {max_bytes} bytes", code="image_too_large", status_code=413)
    try:
        return match.group("mime"), base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError("image data URL is not valid base64", code="image_invalid_data_url") from exc
