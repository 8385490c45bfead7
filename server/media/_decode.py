"""Bytes -> RGB image at the model's final size, refusing what is not a safe, supported image.

Order matters for cost: the block structure is walked with caps (``_prescan``), then the header is read and
checked (format, declared pixel count) before any pixel is decoded; large JPEGs are decoded at 1/2, 1/4 or 1/8
scale by the codec itself (PIL ``draft``), so a 12 MP or 48 MP photo never becomes a full-size bitmap; what is
actually decoded is capped (``max_decoded_pixels``, after that scaling); orientation is applied after the
resize, on the small image. Runs on the decode pool's threads (``_pool``), never on the event loop.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from server.errors import ImageError
from server.media._grid import MISTRAL_SMALL_3_1, VisionGrid
from server.media._prescan import ScanLimits, prescan

logger = logging.getLogger(__name__)

# PIL format name -> MIME type. Only these decoders are ever tried (Image.open(formats=...)): PIL's other
# plugins (EPS runs Ghostscript, for one) are attack surface we do not need.
ALLOWED_FORMATS: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
}
_FORMAT_LIST = "JPEG, PNG, WebP, GIF or BMP"

# EXIF orientation -> the transpose that makes the image upright (same table as PIL.ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = {5, 6, 7, 8}
_EXIF_ORIENTATION_TAG = 0x0112

# mistral_common's normalization (CLIP statistics) as a lookup table: ((v / 255) - mean) / std for every byte v,
# computed in float32 in the same order, so the values are identical and cost one table lookup per pixel.
_MEAN = np.asarray((0.48145466, 0.4578275, 0.40821073), dtype=np.float32)
_STD = np.asarray((0.26862954, 0.26130258, 0.27577711), dtype=np.float32)
_NORMALIZED = np.ascontiguousarray((((np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)) - _MEAN) / _STD).T)
_NORMALIZED.flags.writeable = False
_NORMALIZED_ROWS = [np.ascontiguousarray(table.reshape(1, 256), dtype=np.float32) for table in _NORMALIZED]


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, upright, at grid.target_size(*source_size)
    format: str  # PIL format name of the source
    mime_type: str  # of the source
    source_size: tuple[int, int]  # upright (width, height) before any resize
    tokens: int  # image tokens the model will spend on it


def unsupported(detail: str = "") -> ImageError:
    message = f"the data is not an image in a supported format ({_FORMAT_LIST})"
    return ImageError(f"{message}: {detail}" if detail else message, code="image_unsupported_format", status_code=415)


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    max_decoded_pixels: int | None = None,
    grid: VisionGrid = MISTRAL_SMALL_3_1,
    limits: ScanLimits | None = None,
) -> DecodedImage:
    """``max_pixels``: what the image may declare; ``max_decoded_pixels``: what may be decoded (JPEG: after
    draft scaling), which bounds the memory a decode takes; None: ``max_pixels``."""
    if not data:
        raise ImageError("image is empty (0 bytes)", code="image_empty")
    prescan(data, limits)
    try:
        probe = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except UnidentifiedImageError as exc:
        raise unsupported() from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning when -W error
        raise ImageError(f"image declares too many pixels ({exc})", code="image_too_large", status_code=413) from exc
    except Exception as exc:  # a plugin choking on a hostile header: the client's fault, not ours
        raise _corrupt(exc) from exc
    with probe:
        fmt = probe.format or ""
        if fmt not in ALLOWED_FORMATS:  # cannot happen with formats=..., kept as a guard
            raise unsupported(fmt)
        raw_w, raw_h = probe.size
        if raw_w < 1 or raw_h < 1:
            raise _corrupt(ValueError(f"image has no pixels ({raw_w}x{raw_h})"))
        if raw_w * raw_h > max_pixels:
            raise ImageError(
                f"image is {raw_w}x{raw_h} pixels; the limit is {max_pixels} pixels",
                code="image_too_large",
                status_code=413,
            )
        orientation = _orientation(probe) if fmt in ("JPEG", "WEBP") else 1  # PNG would load everything to tell
        decode_cap = max_pixels if max_decoded_pixels is None else max_decoded_pixels
        try:
            image = _load(probe, fmt, orientation, grid, decode_cap)
        except ImageError:
            raise
        except MemoryError:
            raise
        except Exception as exc:
            raise _corrupt(exc) from exc
    upright = image.size
    return DecodedImage(
        image=image,
        format=fmt,
        mime_type=ALLOWED_FORMATS[fmt],
        source_size=_upright_size(raw_w, raw_h, orientation),
        tokens=grid.token_count(*upright),
    )


def _load(probe: Image.Image, fmt: str, orientation: int, grid: VisionGrid, decode_cap: int) -> Image.Image:
    raw_w, raw_h = probe.size
    upright_w, upright_h = _upright_size(raw_w, raw_h, orientation)
    target_w, target_h = grid.target_size(upright_w, upright_h)
    raw_target = (target_h, target_w) if orientation in _SWAPS_SIDES else (target_w, target_h)
    if fmt == "JPEG":
        probe.draft(probe.mode, raw_target)  # DCT scaling: decoded size stays >= raw_target
    decoded_w, decoded_h = probe.size  # what load() will allocate: the draft size for a JPEG
    if decoded_w * decoded_h > decode_cap:
        raise ImageError(
            f"image is {raw_w}x{raw_h} pixels; decoding it takes {decoded_w}x{decoded_h} pixels and the limit is "
            f"{decode_cap} pixels (a JPEG is decoded at up to 1/8 scale)",
            code="image_too_large",
            status_code=413,
        )
    probe.load()
    if fmt != "JPEG":
        orientation = _orientation(probe)  # now cheap: PNG may carry eXIf after the pixels
        upright_w, upright_h = _upright_size(raw_w, raw_h, orientation)
        target_w, target_h = grid.target_size(upright_w, upright_h)
        raw_target = (target_h, target_w) if orientation in _SWAPS_SIDES else (target_w, target_h)
    image = to_rgb(probe)
    if image.size != raw_target:
        image = resize(image, raw_target)
    elif image is probe:
        image = image.copy()  # detach from the file object we are about to close
    if orientation in _ORIENTATION:
        image = image.transpose(_ORIENTATION[orientation])
    return image


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Box-reduce by a whole factor while still 2x too big (anti-aliasing, cheap), then one bicubic step.

    The bicubic step is OpenCV's on uint8 (several times faster than PIL's), the same interpolation that
    mistral_common applies, but here on an image at most 2x the target, so it does not alias.
    """
    factor = min(image.width // size[0], image.height // size[1])
    if factor >= 2:
        image = image.reduce(factor)
    if image.size == size:
        return image
    return Image.fromarray(cv2.resize(np.asarray(image), size, interpolation=cv2.INTER_CUBIC))


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # malformed EXIF: ignore it rather than refuse a viewable image
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION else 1


def _upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation in _SWAPS_SIDES else (width, height)


def _corrupt(exc: BaseException) -> ImageError:
    logger.debug("image decode failed: %s: %s", type(exc).__name__, exc)
    return ImageError(
        "the image data is truncated or corrupt and cannot be decoded", code="image_corrupt", status_code=400
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for the model: alpha flattened onto white (as mistral_common does), palette/CMYK/16-bit converted."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return Image.fromarray(_grey16_to_8(np.asarray(image))).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _grey16_to_8(array: np.ndarray) -> np.ndarray:
    """16-bit grey -> its top 8 bits (a plain convert("L") would clip everything above 255 to white).

    In the array's own width: uint16 for I;16 (2 bytes a pixel), int32 for "I". Widening to int64 first made a
    100 KB PNG of 8000 x 8000 grey pixels cost about 1 GB of temporaries.
    """
    if array.dtype.kind == "u":  # I;16, any byte order: already 0..65535
        return (array >> 8).astype(np.uint8)
    clipped = np.clip(array, 0, 65535)  # "I" is int32: may hold negatives or more than 16 bits
    if clipped.size and int(clipped.max()) <= 255:
        return clipped.astype(np.uint8)  # "I" holding 8-bit values: already on the 0..255 scale
    clipped >>= 8
    return clipped.astype(np.uint8)


def model_pixels(image: Image.Image) -> np.ndarray:
    """The model's input array for an image already at its grid size: float32 (3, H, W), normalized.

    Same values as mistral_common's ``transform_image`` when its resize is a no-op (our images are grid-sized).
    """
    pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    out = np.empty((3, pixels.shape[0], pixels.shape[1]), dtype=np.float32)
    # OpenCV's LUT on contiguous planes, written straight into the output: same values as np.take, faster.
    for channel, plane in enumerate(cv2.split(pixels)):
        cv2.LUT(plane, _NORMALIZED_ROWS[channel], dst=out[channel])
    return out
