"""The hostile corpus: each input is refused with an exact status and code, or accepted for a stated reason."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from server.config import Settings
from server.engines.azure_wire import forwarded_image
from server.errors import ImageError
from server.media import ImageIntake
from tests.images import (
    bmp_rle8_header,
    data_url,
    encode,
    expect_error,
    gif_with_comments,
    jpeg_with_comments,
    jpeg_with_junk,
    photo,
    png_bomb,
    png_header_only,
    png_with_chunks,
)

PNG = encode(photo(64, 48), "PNG")
JPEG = encode(photo(640, 480), "JPEG", quality=85)
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
HTML = b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


@pytest.fixture()
def intake() -> ImageIntake:
    return ImageIntake(Settings())


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real JPEG whose SOF marker is rewritten to declare another size."""
    data = bytearray(encode(Image.new("RGB", (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


REFUSED: list[tuple[str, bytes, str | None, int, str]] = [
    # name, bytes, declared content type, status, code
    ("zero-byte", b"", None, 400, "image_empty"),
    ("png bomb 8000x8000", png_bomb(8000), "image/png", 413, "image_too_large"),
    ("png declaring 100000x100000", png_header_only(100_000, 100_000), None, 413, "image_too_large"),
    ("png declaring 9000x9000", png_header_only(9000, 9000), None, 413, "image_too_large"),
    ("jpeg declaring 60000x60000", jpeg_declaring(60_000, 60_000), "image/jpeg", 413, "image_too_large"),
    ("truncated jpeg", JPEG[: len(JPEG) // 2], "image/jpeg", 400, "image_corrupt"),
    ("truncated png", PNG[: len(PNG) // 2], "image/png", 400, "image_corrupt"),
    ("jpeg header only", JPEG[:200], None, 400, "image_corrupt"),
    ("svg", SVG, None, 415, "image_unsupported_format"),
    ("svg declared as svg", SVG, "image/svg+xml", 415, "image_unsupported_format"),
    ("pdf", PDF, None, 415, "image_unsupported_format"),
    ("html posing as png", HTML, "image/png", 415, "image_unsupported_format"),
    ("gif magic then html", b"GIF89a\x01\x00\x01\x00\x00\x00\x00" + HTML, "image/gif", 415, "image_unsupported_format"),
    ("eps (would run ghostscript)", EPS, None, 415, "image_unsupported_format"),
    ("tiff", encode(Image.new("RGB", (8, 8)), "TIFF"), "image/tiff", 415, "image_unsupported_format"),
    ("ico", encode(Image.new("RGB", (16, 16)), "ICO"), None, 415, "image_unsupported_format"),
    ("jpeg declared as text/html", JPEG, "text/html", 415, "image_unsupported_format"),
    ("png declared as application/pdf", PNG, "application/pdf", 415, "image_unsupported_format"),
    ("random bytes", bytes(range(256)) * 8, None, 415, "image_unsupported_format"),
    # Under the declared-pixel limit, over the cap on pixels actually decoded (a PNG has no reduced decoding).
    ("png bomb 4100x4100", png_bomb(4100), "image/png", 413, "image_too_large"),
    ("16-bit png bomb 4200x4200", png_bomb(4200, bit_depth=16), "image/png", 413, "image_too_large"),
    # Block structures Pillow would walk in Python (and keep in memory) before decoding a pixel.
    ("png with 300 text chunks", png_with_chunks(300), "image/png", 400, "image_too_complex"),
    ("jpeg with 300 comments", jpeg_with_comments(300), "image/jpeg", 400, "image_too_complex"),
    ("jpeg with 100 KB of junk between markers", jpeg_with_junk(100_000), "image/jpeg", 400, "image_too_complex"),
    ("gif with 300 comments", gif_with_comments(300), "image/gif", 400, "image_too_complex"),
    ("gif comment in 30000 sub-blocks", gif_with_comments(1, sub_blocks=30_000), "image/gif", 400,
     "image_too_complex"),
    ("bmp rle8 2048x1024", bmp_rle8_header(2048, 1024), "image/bmp", 400, "image_too_complex"),
]


@pytest.mark.parametrize(("name", "data", "declared", "status", "code"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_upload(
    intake: ImageIntake, name: str, data: bytes, declared: str | None, status: int, code: str
) -> None:
    with pytest.raises(ImageError) as caught:
        asyncio.run(intake.from_bytes(data, intake.budget(), source="upload", content_type=declared))
    expect_error(caught, status, code)


@pytest.mark.parametrize(("name", "data", "declared", "status", "code"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_data_url(
    intake: ImageIntake, name: str, data: bytes, declared: str | None, status: int, code: str
) -> None:
    url = data_url(data, declared or "image/png")
    with pytest.raises(ImageError) as caught:
        asyncio.run(intake.from_url(url, intake.budget()))
    expect_error(caught, status, code)


def test_polyglot_png_with_trailing_html_is_decoded_and_the_payload_dropped(intake: ImageIntake) -> None:
    part = asyncio.run(intake.from_bytes(PNG + HTML, intake.budget(), source="upload", content_type="image/png"))
    assert part.image.mode == "RGB" and part.mime_type == "image/png"
    forwarded, mime = forwarded_image(part)  # what an escalation sends to Azure
    assert mime == "image/png" and forwarded.startswith(b"\x89PNG") and b"<html" not in forwarded


def test_wrong_image_mime_is_settled_by_sniffing(intake: ImageIntake) -> None:
    # Clients mislabel images all the time (image/jpg, PNG sent as JPEG): the bytes decide.
    part = asyncio.run(intake.from_bytes(PNG, intake.budget(), source="upload", content_type="image/jpeg"))
    assert part.mime_type == "image/png"
    part = asyncio.run(intake.from_url(data_url(JPEG, "application/octet-stream"), intake.budget()))
    assert part.mime_type == "image/jpeg" and part.source == "data-url"


def test_forwarded_jpeg_carries_no_exif(intake: ImageIntake) -> None:
    exif = Image.Exif()
    exif[0x010F] = "SecretCameraMaker"
    data = encode(photo(200, 100), "JPEG", exif=exif.tobytes())
    part = asyncio.run(intake.from_bytes(data, intake.budget(), source="upload"))
    forwarded, mime = forwarded_image(part)
    assert mime == "image/jpeg" and b"SecretCameraMaker" not in forwarded
    assert Image.open(io.BytesIO(forwarded)).size == (224, 112)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("data:image/png,rawbytes", "image_invalid_data_url"),
        ("data:image/png;base64,@@@not-base64@@@", "image_invalid_data_url"),
        ("data:", "image_invalid_data_url"),
        ("file:///etc/passwd", "image_url_forbidden"),
        ("ftp://example.com/a.png", "image_url_forbidden"),
        ("gopher://example.com/", "image_url_forbidden"),
        ("javascript:alert(1)", "image_url_forbidden"),
        ("/relative/path.png", "image_url_forbidden"),
        ("", "image_url_forbidden"),
    ],
)
def test_refused_urls_without_any_fetch(url: str, code: str) -> None:
    intake = ImageIntake(Settings())
    with pytest.raises(ImageError) as caught:
        asyncio.run(intake.from_url(url, intake.budget()))
    expect_error(caught, 400, code)


def test_limits_per_image_count_and_total() -> None:
    intake = ImageIntake(Settings(max_image_bytes=len(JPEG) - 1))
    with pytest.raises(ImageError) as caught:
        asyncio.run(intake.from_bytes(JPEG, intake.budget(), source="upload"))
    expect_error(caught, 413, "image_too_large")
    with pytest.raises(ImageError) as caught:  # refused from the data URL's length, before base64 decoding
        asyncio.run(intake.from_url(data_url(JPEG * 2, "image/jpeg"), intake.budget()))
    expect_error(caught, 413, "image_too_large")

    intake = ImageIntake(Settings(max_images_per_request=2))
    budget = intake.budget()
    for _ in range(2):
        asyncio.run(intake.from_bytes(PNG, budget, source="upload"))
    with pytest.raises(ImageError) as caught:
        asyncio.run(intake.from_url(data_url(PNG), budget))
    expect_error(caught, 400, "too_many_images")

    intake = ImageIntake(Settings(max_total_image_bytes=len(PNG) * 2 + 10))
    budget = intake.budget()
    asyncio.run(intake.from_bytes(PNG, budget, source="upload"))
    asyncio.run(intake.from_bytes(PNG, budget, source="upload"))
    with pytest.raises(ImageError) as caught:
        asyncio.run(intake.from_bytes(PNG, budget, source="upload"))
    expect_error(caught, 413, "image_too_large")
    assert budget.images == 2 and budget.total_bytes == len(PNG) * 2


def test_pixel_limit_is_configurable() -> None:
    intake = ImageIntake(Settings(max_image_pixels=640 * 480 - 1))
    with pytest.raises(ImageError) as caught:
        asyncio.run(intake.from_bytes(JPEG, intake.budget(), source="upload"))
    expect_error(caught, 413, "image_too_large")
