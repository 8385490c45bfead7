"""The block-structure walk: caps on metadata blocks, blocks in all, JPEG junk and scans, BMP RLE, all as 400s.

Each cap is shown both ways: a file just inside it decodes, one past it is refused with ``image_too_complex``
before Pillow parses anything (Pillow's parsers are the slow, memory-keeping Python loops the caps protect).
"""

from __future__ import annotations

import pytest
from PIL import Image

from server.errors import ImageError
from server.media import decode_image
from server.media._prescan import ScanLimits, prescan, sniff
from tests import images as make

LIMITS = ScanLimits()
MAX_PIXELS = 50_000_000


def refused(data: bytes, limits: ScanLimits = LIMITS) -> ImageError:
    with pytest.raises(ImageError) as caught:
        decode_image(data, max_pixels=MAX_PIXELS, limits=limits)
    return make.expect_error(caught, 400, "image_too_complex")


def accepted(data: bytes, limits: ScanLimits = LIMITS) -> None:
    assert decode_image(data, max_pixels=MAX_PIXELS, limits=limits).image.size[0] > 0


def test_png_text_chunks_are_capped() -> None:
    accepted(make.png_with_chunks(LIMITS.max_metadata_blocks - 2))  # IHDR and IEND count too
    assert "metadata blocks" in refused(make.png_with_chunks(LIMITS.max_metadata_blocks + 1)).message


def test_one_large_png_chunk_and_all_metadata_together_are_capped() -> None:
    big = make.png_with_chunks(1, b"zTXt", b"k\x00\x00" + b"x" * LIMITS.max_metadata_block_bytes)
    assert "bytes" in refused(big).message
    many = ScanLimits(max_metadata_bytes=10_000)
    accepted(make.png_with_chunks(9, payload=b"x" * 1000), many)
    assert "bytes of metadata" in refused(make.png_with_chunks(11, payload=b"x" * 1000), many).message


def test_png_pixel_chunks_count_towards_the_block_cap_not_the_metadata_cap() -> None:
    tiny = make.png_in_idat_pieces(1)  # one IDAT chunk per compressed byte
    chunks = tiny.count(b"IDAT")
    assert chunks > LIMITS.max_metadata_blocks  # many pixel chunks are fine...
    accepted(tiny, ScanLimits(max_blocks=chunks + 2))
    assert "blocks" in refused(tiny, ScanLimits(max_blocks=chunks - 1)).message  # ...up to the block cap


def test_polyglot_trailer_after_iend_is_not_walked() -> None:
    png = make.png_in_idat_pieces(8192)
    accepted(png + make.png_with_chunks(1000)[8:], ScanLimits(max_metadata_blocks=4))


def test_jpeg_segments_before_the_first_scan_are_capped() -> None:
    accepted(make.jpeg_with_comments(100))
    assert "metadata blocks" in refused(make.jpeg_with_comments(LIMITS.max_metadata_blocks + 1)).message


def test_jpeg_junk_between_markers_is_capped() -> None:
    accepted(make.jpeg_with_junk(1000))
    assert "junk" in refused(make.jpeg_with_junk(LIMITS.max_jpeg_junk_bytes + 1)).message


def test_progressive_jpeg_scans_are_capped() -> None:
    progressive = make.encode(make.photo(64, 64), "JPEG", progressive=True, quality=90)
    baseline = make.encode(make.photo(64, 64), "JPEG", quality=90)
    accepted(progressive)  # Pillow's (libjpeg's) progressive script: well under the default cap
    accepted(baseline, ScanLimits(max_jpeg_scans=1))
    assert "scans" in refused(progressive, ScanLimits(max_jpeg_scans=2)).message
    # Images after the main one's EOI (a phone's MPF preview or depth map) are never decoded: not counted.
    accepted(baseline + progressive, ScanLimits(max_jpeg_scans=1))


def test_gif_comments_and_their_sub_blocks_are_capped() -> None:
    accepted(make.gif_with_comments(10, sub_blocks=4, sub_block_size=255))
    assert "metadata blocks" in refused(make.gif_with_comments(LIMITS.max_metadata_blocks + 1)).message
    # One comment cut into tiny sub-blocks: each is a Python call in Pillow.
    assert "blocks" in refused(make.gif_with_comments(1, sub_blocks=LIMITS.max_blocks + 1)).message


def test_webp_metadata_chunks_are_capped() -> None:
    accepted(make.webp_with_chunks(3))
    refused(make.webp_with_chunks(LIMITS.max_metadata_blocks + 1))


def test_bmp_rle_is_capped_by_its_pixels() -> None:
    assert "run-length" in refused(make.bmp_rle8_header(2048, 1024)).message
    prescan(make.bmp_rle8_header(1024, 1024))  # at the cap: left to Pillow
    prescan(make.encode(Image.new("RGB", (2048, 1024)), "BMP"))  # uncompressed BMP: C decoder, no cap here


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (make.encode(Image.new("RGB", (4, 4)), "PNG"), "PNG"),
        (make.encode(Image.new("RGB", (4, 4)), "JPEG"), "JPEG"),
        (make.encode(Image.new("P", (4, 4)), "GIF"), "GIF"),
        (make.encode(Image.new("RGB", (4, 4)), "WEBP"), "WEBP"),
        (make.encode(Image.new("RGB", (4, 4)), "BMP"), "BMP"),
        (b"<svg/>", None),
        (b"", None),
    ],
)
def test_sniff(data: bytes, fmt: str | None) -> None:
    assert sniff(data) == fmt


@pytest.mark.parametrize("cut", [9, 20, 40, 60])
def test_truncated_structure_is_left_to_pillow(cut: int) -> None:
    for make_one in (make.png_with_chunks, make.jpeg_with_comments, make.gif_with_comments, make.webp_with_chunks):
        data = make_one(3)
        assert prescan(data[:cut]) in ("PNG", "JPEG", "GIF", "WEBP", None)  # no exception, no endless loop
