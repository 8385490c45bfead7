"""Walk an image's block structure, with caps, before Pillow parses it.

Pillow reads PNG chunks, JPEG markers (and any junk bytes between them, one byte at a time) and GIF extension
sub-blocks in Python loops, and keeps what it finds (comments, text chunks, profiles) in memory; libjpeg makes
one pass over the whole image per progressive scan; Pillow's BMP RLE decoder is Python, per pixel. A few MB of
hostile structure can therefore cost seconds of CPU and a lot of memory before a pixel is decoded. This walk is
linear, mostly C-speed (``find``/``count``/``struct``), bounded by the caps below, and refuses an image that
exceeds them with a 400 ``image_too_complex``. It judges structure only: a truncated or malformed image is left
to Pillow, which reports it as ``image_corrupt`` as before.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from server.errors import ImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FF_RUN = re.compile(rb"\xff+")
# PNG chunks that carry pixels or animation frames; every other chunk is metadata Pillow parses and keeps.
_PNG_PIXEL_CHUNKS = {b"IDAT", b"fdAT", b"fcTL"}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RST0-7, SOI: no length field
_WEBP_METADATA = {b"ICCP", b"EXIF", b"XMP "}


@dataclass(frozen=True)
class ScanLimits:
    # Blocks walked in all: PNG chunks, JPEG markers, GIF extension sub-blocks, WebP chunks. An encoder writing
    # 1 KB IDAT chunks still fits a 20 MB PNG (libpng writes 8 KB ones).
    max_blocks: int = 20_000
    # Metadata blocks (PNG text/profile/unknown chunks, JPEG segments before the first scan, GIF extensions
    # before the first frame, WebP ICCP/EXIF/XMP): real images carry a handful to a few dozen; each costs
    # Python work in Pillow, and what it holds is kept in memory.
    max_metadata_blocks: int = 256
    max_metadata_block_bytes: int = 1 << 20  # one of them (Pillow's own per-text-chunk limit)
    max_metadata_bytes: int = 4 << 20  # all of them together
    # Junk and fill bytes between JPEG markers: Pillow skips them one Python call per byte.
    max_jpeg_junk_bytes: int = 64 << 10
    # Scans of the main JPEG image. Baseline has 1 (3 if not interleaved); libjpeg's and mozjpeg's progressive
    # scripts use about 10; each scan is a full pass over the image's coefficients.
    max_jpeg_scans: int = 100
    # BMP RLE is decoded by Pillow in Python, pixel run by pixel run.
    max_bmp_rle_pixels: int = 1 << 20


def sniff(data: bytes) -> str | None:
    """PIL's format name from the magic bytes, for the formats we accept; None for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    return None


def too_complex(what: str) -> ImageError:
    return ImageError(f"image structure is too complex to decode safely: {what}", code="image_too_complex")


class _Counter:
    def __init__(self, limits: ScanLimits) -> None:
        self.limits = limits
        self.blocks = 0
        self.metadata_blocks = 0
        self.metadata_bytes = 0

    def block(self) -> None:
        self.blocks += 1
        if self.blocks > self.limits.max_blocks:
            raise too_complex(f"more than {self.limits.max_blocks} blocks")

    def metadata(self, size: int, what: str) -> None:
        self.metadata_blocks += 1
        if self.metadata_blocks > self.limits.max_metadata_blocks:
            raise too_complex(f"more than {self.limits.max_metadata_blocks} metadata blocks")
        if size > self.limits.max_metadata_block_bytes:
            raise too_complex(f"a {what} of {size} bytes (limit {self.limits.max_metadata_block_bytes})")
        self.metadata_bytes += size
        if self.metadata_bytes > self.limits.max_metadata_bytes:
            raise too_complex(f"more than {self.limits.max_metadata_bytes} bytes of metadata")


def prescan(data: bytes, limits: ScanLimits | None = None) -> str | None:
    """Check ``data``'s structure against ``limits``; returns the sniffed format (None: not one we accept)."""
    limits = limits or ScanLimits()
    fmt = sniff(data)
    counter = _Counter(limits)
    if fmt == "PNG":
        _png(data, counter)
    elif fmt == "JPEG":
        _jpeg(data, counter)
    elif fmt == "GIF":
        _gif(data, counter)
    elif fmt == "WEBP":
        _webp(data, counter)
    elif fmt == "BMP":
        _bmp(data, limits)
    return fmt


def _png(data: bytes, counter: _Counter) -> None:
    pos, end = len(PNG_SIGNATURE), len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        counter.block()
        if kind not in _PNG_PIXEL_CHUNKS:
            counter.metadata(length, f"PNG {kind.decode('latin-1')!r} chunk")
        pos += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return  # what follows IEND is never parsed (a polyglot's payload is dropped with it)


def _jpeg(data: bytes, counter: _Counter) -> None:
    limits = counter.limits
    pos, end, junk = 2, len(data), 0
    while pos < end:
        marker_at = data.find(b"\xff", pos)
        if marker_at < 0:
            return  # no more markers: truncated, Pillow will say so
        run = _FF_RUN.match(data, marker_at)
        assert run is not None
        junk += (marker_at - pos) + (run.end() - marker_at - 1)  # bytes Pillow would step over one by one
        if junk > limits.max_jpeg_junk_bytes:
            raise too_complex(f"more than {limits.max_jpeg_junk_bytes} junk bytes between JPEG markers")
        pos = run.end()
        if pos >= end:
            return
        marker = data[pos]
        pos += 1
        counter.block()
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD9 or pos + 2 > end:  # EOI before any scan, or truncated: Pillow decides
            return
        (length,) = struct.unpack_from(">H", data, pos)
        if marker == 0xDA:
            _jpeg_scans(data, pos, limits)
            return
        # Every segment before the first scan (APPn, COM, tables, frame header) is parsed by Pillow in Python.
        counter.metadata(length, _jpeg_segment_name(marker))
        pos += length


def _jpeg_segment_name(marker: int) -> str:
    if 0xE0 <= marker <= 0xEF:
        return f"JPEG APP{marker - 0xE0} segment"
    return "JPEG comment" if marker == 0xFE else f"JPEG segment 0x{marker:02x}"


def _jpeg_scans(data: bytes, first_scan: int, limits: ScanLimits) -> None:
    # Entropy-coded data stuffs every 0xFF with 0x00, so FF DA / FF D9 past the first scan are markers. The
    # main image ends at its EOI; further images (phones' MPF previews and depth maps) are not decoded.
    main_end = data.find(b"\xff\xd9", first_scan)
    scans = 1 + data.count(b"\xff\xda", first_scan, main_end if main_end >= 0 else len(data))
    if scans > limits.max_jpeg_scans:
        raise too_complex(f"{scans} JPEG scans (limit {limits.max_jpeg_scans})")


def _gif(data: bytes, counter: _Counter) -> None:
    end = len(data)
    if end < 13:
        return
    flags = data[10]
    pos = 13 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0)  # after the global colour table
    # Pillow parses extensions in Python up to the first image descriptor; frames after it are never read.
    while pos + 1 < end and data[pos] == 0x21:
        label = data[pos + 1]
        pos += 2
        size_of_extension = 0
        while pos < end:
            counter.block()
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
            size_of_extension += size
        what = "GIF comment" if label == 0xFE else f"GIF extension 0x{label:02x}"
        counter.metadata(size_of_extension, what)


def _webp(data: bytes, counter: _Counter) -> None:
    pos, end = 12, len(data)
    while pos + 8 <= end:
        kind = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        counter.block()
        if kind in _WEBP_METADATA:
            counter.metadata(size, f"WebP {kind.decode('latin-1').strip()} chunk")
        pos += 8 + size + (size & 1)


def _bmp(data: bytes, limits: ScanLimits) -> None:
    if len(data) < 34 or struct.unpack_from("<I", data, 14)[0] < 40:
        return  # the old OS/2 header has no compression field
    width, height, _planes, _bits, compression = struct.unpack_from("<iiHHI", data, 18)
    if compression in (1, 2) and abs(width) * abs(height) > limits.max_bmp_rle_pixels:
        raise too_complex(
            f"a run-length-encoded BMP of {abs(width)}x{abs(height)} pixels (limit {limits.max_bmp_rle_pixels} pixels)"
        )
