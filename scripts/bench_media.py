"""Benchmark: encoded image bytes -> model-ready pixel array, ours vs mistral_common's own ImageEncoder.

Ours: ``ImageIntake.prepare`` (header checks, reduced-size JPEG decoding, resize straight to the 28-px grid,
orientation, RGB) + ``model_pixels`` (normalization). Timed apart: ``forwarded_image``, the re-encode an
escalation to Azure adds (paid by escalated requests only).
Reference: ``ImageEncoder(ImageChunk(image=PIL.Image.open(bytes)))``: full decode, float32 resize, normalization.
Both run on the same machine in the same process; the token counts are compared too.

    .venv-test/bin/python scripts/bench_media.py --repeat 5 --out bench_media.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from mistral_common.protocol.instruct.chunk import ImageChunk
from mistral_common.tokens.tokenizers.image import ImageConfig, ImageEncoder, SpecialImageIDs
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import machine_info
from bench_stats import percentile, timings

from server.config import Settings
from server.engines.azure_wire import forwarded_image
from server.media import MISTRAL_SMALL_3_1, ImageIntake, model_pixels

ENCODER = ImageEncoder(
    ImageConfig(MISTRAL_SMALL_3_1.patch_size, MISTRAL_SMALL_3_1.max_image_size, MISTRAL_SMALL_3_1.spatial_merge_size),
    SpecialImageIDs(img=10, img_break=12, img_end=13),
)


def realistic(width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradients, soft blobs and sensor-like noise: compresses like a photo (a few bits per pixel)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for c in range(3):
        field = 90 + 60 * np.sin(xx / (180 + 40 * c)) * np.cos(yy / (230 - 30 * c)) + 50 * xx / width
        for _ in range(6):  # soft shapes
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.25) * width
            field += rng.uniform(-60, 60) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        channels.append(field)
    image = np.stack(channels, axis=2) + rng.normal(0, 6, size=(height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def make_inputs() -> dict[str, bytes]:
    inputs = {}
    photo = realistic(4032, 3024, seed=1)  # 12.2 MP, a phone camera's size
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    inputs["jpeg_12mp_4032x3024"] = buffer.getvalue()
    screen = realistic(3840, 2160, seed=2)  # 4K
    buffer = io.BytesIO()
    screen.save(buffer, format="PNG")
    inputs["png_4k_3840x2160"] = buffer.getvalue()
    small = realistic(1024, 768, seed=3)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=90)
    inputs["jpeg_1024x768"] = buffer.getvalue()
    return inputs


def median_seconds(function: Callable[[], object], repeat: int) -> float:
    return percentile(timings(function, repeat), 50)


def intake_cpu_ms(images: Sequence[bytes]) -> dict[str, float]:
    """Mean CPU milliseconds per image over a whole set, ours and mistral_common's, once each, in this process.

    bench_captions.py uses it to say how much of a server's CPU per image the image intake can account for.
    """
    intake = ImageIntake(Settings())
    spent = {"ours_ms": 0.0, "mistral_common_ms": 0.0}
    for data in images:
        started = time.process_time()
        model_pixels(intake.prepare(data, intake.budget(), source="bench").image)
        spent["ours_ms"] += time.process_time() - started
        started = time.process_time()
        ENCODER(ImageChunk(image=Image.open(io.BytesIO(data))))
        spent["mistral_common_ms"] += time.process_time() - started
    return {key: seconds * 1e3 / max(len(images), 1) for key, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench_media.json"))
    args = parser.parse_args()

    intake = ImageIntake(Settings())
    results = []
    for name, data in make_inputs().items():

        def reference(data: bytes = data) -> np.ndarray:
            return ENCODER(ImageChunk(image=Image.open(io.BytesIO(data)))).image

        row: dict[str, object] = {"input": name, "bytes": len(data)}
        reference_tokens = len(ENCODER(ImageChunk(image=Image.open(io.BytesIO(data)))).tokens)
        row["mistral_common_s"] = median_seconds(reference, args.repeat)

        def ours(data: bytes = data) -> np.ndarray:
            part = intake.prepare(data, intake.budget(), source="bench")
            return model_pixels(part.image)

        row["ours_s"] = median_seconds(ours, args.repeat)
        part = intake.prepare(data, intake.budget(), source="bench")
        row["forwarding_encode_s"] = median_seconds(lambda part=part: forwarded_image(part), args.repeat)
        our_tokens = len(ENCODER(ImageChunk(image=part.image)).tokens)
        row.update(
            tokens_mistral_common=reference_tokens,
            tokens_ours=our_tokens,
            same_tokens=our_tokens == reference_tokens,
            model_size=list(part.image.size),
            speedup=row["mistral_common_s"] / row["ours_s"],  # type: ignore[operator]
        )
        results.append(row)
        print(
            f"{name:24s} {len(data) / 1e6:6.2f} MB  mistral_common {row['mistral_common_s'] * 1e3:7.1f} ms  "
            f"ours {row['ours_s'] * 1e3:6.1f} ms ({row['speedup']:.1f}x)  "
            f"forwarding encode (escalations only) {row['forwarding_encode_s'] * 1e3:6.1f} ms  "
            f"tokens {reference_tokens} vs {our_tokens}"
        )
    machine = {**machine_info(), "pillow": Image.__version__}
    args.out.write_text(json.dumps({"machine": machine, "repeat": args.repeat, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
