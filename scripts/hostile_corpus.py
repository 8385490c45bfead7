"""The hostile inputs of issue 22, one builder per item, for scripts/hostile.py (CPU-only, no server needed here).

Every body is built on demand and bounded; nothing here names an address other than 127.0.0.1, except image
URLs whose address the server's guard must refuse before connecting (IP literals it refuses today).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

MODEL_TOKENS = {"max_tokens": 1, "temperature": 0.0}


@dataclass
class Probe:
    """One HTTP request of the corpus. ``expect`` is the set of acceptable statuses (empty: any non-5xx)."""

    item: int
    name: str
    body: dict[str, Any] | bytes | None = None
    path: str = "/v1/chat/completions"
    headers: dict[str, str] = field(default_factory=dict)
    expect: frozenset[int] = frozenset()


def chat(content: Any, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **MODEL_TOKENS, **extra}


def data_url(payload: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(payload).decode()


def image_chat(payload: bytes, mime: str = "image/png") -> dict[str, Any]:
    return chat([{"type": "text", "text": "what is this?"},
                 {"type": "image_url", "image_url": {"url": data_url(payload, mime)}}])


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 200 if mode in ("L", "I;16") else (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def gradient_jpeg(width: int, height: int) -> bytes:
    """A phone-photo-sized JPEG that compresses well (a gradient), so building it stays cheap."""
    row = Image.linear_gradient("L").resize((width, 1))
    image = row.resize((width, height)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG whose header declares a huge size over a few bytes of data (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


# The chunk/comment/marker bombs wrap a 64x64 image: big enough that the model takes it (item 2 is about
# tiny images), so what they test is the parsing work, not the size.
def png_many_chunks(count: int = 20_000) -> bytes:
    """A valid 64x64 PNG with thousands of text chunks before its pixels (a Python loop per chunk in Pillow)."""
    base = png(64, 64)
    head, tail = base[:33], base[33:]  # signature + IHDR, then the rest
    return head + b"".join(_chunk(b"tEXt", b"k\x00" + b"v" * 8) for _ in range(count)) + tail


def gif_many_comments(count: int = 20_000) -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (64, 64)).save(buffer, format="GIF")
    data = buffer.getvalue()
    comments = b"".join(b"\x21\xfe\x08commentx\x00" for _ in range(count))
    return data[:-1] + comments + data[-1:]  # before the trailer byte


def jpeg_many_markers(count: int = 20_000) -> bytes:
    base = gradient_jpeg(64, 64)
    comment = b"\xff\xfe" + struct.pack(">H", 10) + b"comment!"
    return base[:2] + comment * count + base[2:]


def deep_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def tool(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


def raw_json(text: str) -> bytes:
    """A body kept as written: json.dumps would escape a lone surrogate differently."""
    return text.encode()


def item1_router() -> Iterator[Probe]:
    yield Probe(1, "A. x + 16,000 newlines", chat("A. x" + "\n" * 16_000))
    yield Probe(1, "choice lines x 4,000", chat("".join(f"{'ABCD'[i % 4]}. option\n" for i in range(4000))))
    yield Probe(1, "60,000 spaces then a question", chat(" " * 60_000 + "why?"))
    yield Probe(1, "code fences x 3,000", chat("```\n" * 3000))


def item2_small_images() -> Iterator[Probe]:
    for width, height in ((1, 1), (2, 2), (14, 14), (27, 27), (28, 28), (29, 29), (56, 56), (1, 300), (300, 1)):
        yield Probe(2, f"{width}x{height} PNG", image_chat(png(width, height)))


def item6_image_work() -> Iterator[Probe]:
    yield Probe(6, "PNG bomb 30000x30000", image_chat(png_bomb()))
    yield Probe(6, "PNG with 20,000 text chunks", image_chat(png_many_chunks()))
    yield Probe(6, "GIF with 20,000 comments", image_chat(gif_many_comments(), "image/gif"))
    yield Probe(6, "JPEG with 20,000 COM markers", image_chat(jpeg_many_markers(), "image/jpeg"))
    yield Probe(6, "16-bit PNG 3000x3000", image_chat(png(3000, 3000, "I;16")))
    yield Probe(6, "12 MP phone JPEG", image_chat(gradient_jpeg(4000, 3000), "image/jpeg"), expect=frozenset({200}))
    yield Probe(6, "48 MP phone JPEG", image_chat(gradient_jpeg(8000, 6000), "image/jpeg"), expect=frozenset({200}))


def item11_unbounded() -> Iterator[Probe]:
    capped = frozenset({400, 413})
    yield Probe(11, "10,000 stop sequences", chat("hi", stop=[f"s{i}" for i in range(10_000)]), expect=capped)
    yield Probe(11, "one 200,000-char stop", chat("hi", stop=["z" * 200_000]), expect=capped)
    yield Probe(11, "tool schema maxItems 1e9", chat("hi", tools=[tool({"type": "array", "maxItems": 10**9})]),
                expect=capped)
    yield Probe(11, "json_schema minLength 1e9", chat("hi", response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "string", "minLength": 10**9}}}), expect=capped)
    yield Probe(11, "schema 800 levels deep", chat("hi", tools=[tool(deep_schema(800))]), expect=capped)
    yield Probe(11, "5,000 tools", chat("hi", tools=[tool({"type": "object"})] * 5000), expect=capped)
    yield Probe(11, "seed 2**64", chat("hi", seed=2**64), expect=capped)
    yield Probe(11, "seed of 5,000 digits", raw_json(json.dumps(chat("hi"))[:-1] + ', "seed": ' + "9" * 5000 + "}"),
                expect=capped)
    yield Probe(11, "100,000 messages", {"messages": [{"role": "user", "content": "x"}] * 100_000, **MODEL_TOKENS},
                expect=capped)
    yield Probe(11, "60,000 content parts", chat([{"type": "text", "text": "x"}] * 60_000), expect=capped)
    for where, text in (
        ("content", '{"messages":[{"role":"user","content":"a\\ud800b"}],"max_tokens":1}'),
        ("stop", '{"messages":[{"role":"user","content":"hi"}],"stop":["\\udfff"],"max_tokens":1}'),
        ("name", '{"messages":[{"role":"user","content":"hi","name":"\\ud83d"}],"max_tokens":1}'),
        ("caption prompt", '{"image_urls":["' + data_url(png(32, 32)) + '"],"prompt":"\\udc00","max_tokens":1}'),
    ):
        path = "/v1/captions" if where == "caption prompt" else "/v1/chat/completions"
        yield Probe(11, f"lone surrogate in {where}", raw_json(text), path=path, expect=frozenset({400}))


def item13_small() -> Iterator[Probe]:
    refused = frozenset({400, 403})
    for url in ("https://169.254.169.254/latest/meta-data/", "https://[::ffff:169.254.169.254]/x.png",
                "https://127.0.0.1/x.png", "https://[::1]/x.png", "https://0x7f000001/x.png"):
        yield Probe(13, f"image URL {url}", chat([{"type": "image_url", "image_url": {"url": url}}]), expect=refused)


def static_probes() -> list[Probe]:
    """Every request-shaped input (the stateful ones, such as budget races and tricklers, live in hostile.py)."""
    return [*item1_router(), *item2_small_images(), *item6_image_work(), *item11_unbounded(), *item13_small()]


EMPTY_KEYS = (" , ", ",, ,", ":sk-0123456789abcdef:x")  # parse to nothing, or malformed: start-up must fail
