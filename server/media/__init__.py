"""Image intake: data URLs, SSRF-safe https fetch, uploads; limits; safe decode; resize to the model's grid.

Public surface (the rest lives in private modules):

    ImageIntake(settings)                 .budget(), await .from_url(url, budget), .from_bytes(data, budget, ...)
    ImageBudget                           per-request image count and byte counters
    VisionGrid / MISTRAL_SMALL_3_1        the vision encoder's geometry: target size, token count
    decode_image, model_pixels            bytes -> grid-sized RGB image -> normalized float array
    SafeFetcher, AddressPolicy            the remote fetcher and its address policy (allow-list)
"""

from server.media._decode import ALLOWED_FORMATS, DecodedImage, decode_image, model_pixels, to_rgb
from server.media._fetch import FetchedImage, SafeFetcher
from server.media._grid import MISTRAL_SMALL_3_1, VisionGrid
from server.media._intake import ImageBudget, ImageIntake, check_declared_type, decode_data_url
from server.media._netguard import AddressPolicy, forbidden_reason

__all__ = [
    "ALLOWED_FORMATS",
    "MISTRAL_SMALL_3_1",
    "AddressPolicy",
    "DecodedImage",
    "FetchedImage",
    "ImageBudget",
    "ImageIntake",
    "SafeFetcher",
    "VisionGrid",
    "check_declared_type",
    "decode_data_url",
    "decode_image",
    "forbidden_reason",
    "model_pixels",
    "to_rgb",
]
