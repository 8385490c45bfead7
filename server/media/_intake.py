"""Image intake: what a client sent (data URL, https URL, upload) -> a validated ``ImagePart`` the model can use.

The API calls ``intake.budget()`` once per request, then ``await intake.from_url(url, budget)`` for each
``image_url`` part, or ``intake.from_bytes(data, budget, source="upload", content_type=...)`` for a multipart
upload. Every refusal is an ``ImageError`` (400/413/415) with a stable code:

    image_invalid_data_url    400  malformed data: URL or base64
    image_url_forbidden       400  scheme not accepted, credentials in URL, host resolves to a non-public address
    image_fetch_failed        400  remote fetch failed: DNS, connect, HTTP status, timeout, too many redirects
    image_empty               400  zero bytes
    image_corrupt             400  a supported format, but truncated or undecodable
    too_many_images           400  more images than max_images_per_request
    image_too_large           413  bytes per image, total bytes per request, or pixels per image
    image_unsupported_format  415  not JPEG/PNG/WebP/GIF/BMP (SVG, PDF, HTML, ...), or a non-image declared type
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import math
import re
from dataclasses import dataclass, field

from PIL import Image

from server.config import Settings
from server.engines.base import ImagePart
from server.errors import ImageError
from server.media._decode import ALLOWED_FORMATS, decode_image, unsupported
from server.media._fetch import SafeFetcher
from server.media._grid import MISTRAL_SMALL_3_1, VisionGrid

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
# Declared types that may hold an image we can sniff; anything else (text/html, image/svg+xml, ...) is refused.
_NEUTRAL_TYPES = {"application/octet-stream", "binary/octet-stream", "application/unknown"}
_NOT_RASTER = {"image/svg+xml", "image/svg"}
# Images up to this size (by their header) are decoded on the event loop; larger ones in a worker thread, where
# a thread hop is small next to the decode. A 512 x 512 PNG decodes and resizes in about a millisecond.
INLINE_DECODE_MAX_PIXELS = 512 * 512


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
    ) -> None:
        self.settings = settings
        self.grid = grid
        self.fetcher = fetcher or SafeFetcher.from_settings(settings)

    def budget(self) -> ImageBudget:
        return ImageBudget(self.settings.max_images_per_request, self.settings.max_total_image_bytes)

    async def from_url(self, url: str, budget: ImageBudget) -> ImagePart:
        """An OpenAI ``image_url``: a data: URL, or https:// (http:// when allowed) fetched through the guard."""
        scheme = url.split(":", 1)[0].strip().lower() if ":" in url else ""
        budget.check_room()
        if scheme == "data":
            mime, data = decode_data_url(url, self.settings.max_image_bytes)
            source = "data-url"
        elif scheme in ("https", "http") and self.settings.image_fetch_enabled:
            limit = min(self.settings.max_image_bytes, budget.remaining_bytes)
            fetched = await self.fetcher.fetch(url, max_bytes=limit)
            mime, data, source = fetched.content_type, fetched.data, scheme
        else:
            accepted = "data:, https:" + (", http:" if self.settings.allow_http else "")
            if not self.settings.image_fetch_enabled:
                accepted = "data:"
            raise ImageError(
                f"image URL scheme {scheme or '(none)'!r} is not accepted; use {accepted} URLs",
                code="image_url_forbidden",
                param="image_url",
            )
        self._admit(data, budget, mime)
        if _declared_pixels(data) <= INLINE_DECODE_MAX_PIXELS:
            return self._decode(data, source)  # about a millisecond: cheaper than a hop to a thread and back
        # Decoding takes tens of milliseconds for a large photo: keep it off the event loop.
        return await asyncio.to_thread(self._decode, data, source)

    def from_bytes(
        self, data: bytes, budget: ImageBudget, *, source: str, content_type: str | None = None
    ) -> ImagePart:
        """Raw bytes (a multipart upload): ``content_type`` is the part's declared type, checked, then sniffed."""
        self._admit(data, budget, content_type)
        return self._decode(data, source)

    def _admit(self, data: bytes, budget: ImageBudget, content_type: str | None) -> None:
        check_declared_type(content_type)
        if len(data) > self.settings.max_image_bytes:
            raise ImageError(
                f"image is {len(data)} bytes; the limit is {self.settings.max_image_bytes}",
                code="image_too_large",
                status_code=413,
            )
        budget.charge(len(data))

    def _decode(self, data: bytes, source: str) -> ImagePart:
        decoded = decode_image(data, max_pixels=self.settings.max_image_pixels, grid=self.grid)
        return ImagePart(image=decoded.image, mime_type=decoded.mime_type, source=source)


def _declared_pixels(data: bytes) -> float:
    """Width x height from the image header alone (no decoding); infinity when the header cannot be read."""
    try:
        with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as probe:  # the decoders decode_image uses
            width, height = probe.size
    except Exception:  # refused properly by the full decode, off the event loop
        return math.inf
    return float(width * height)


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
