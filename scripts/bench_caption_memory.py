"""Does our API process keep memory as it captions? Its resident memory after each of a series of passes.

    .venv-vllm/bin/python scripts/bench_caption_memory.py [--images 200] [--passes captions:8,captions:32,...]
                                                          [--out docs/bench-data/captions-memory.json]

Starts our server alone (`python -m server serve --profile tiny-mistral3-vllm` on 127.0.0.1, a fresh
MSSERVE_STATE_DIR), then sends the photo set of bench_captions.py once per pass: ``captions:N`` as /v1/captions
requests with N in flight, ``batch`` through the Batch API (the lines `msserve caption --batch` writes, batch
concurrency --batch-concurrency). Each pass sends its own variant of the set (bench_captions.data_urls), as a
library never repeats a photo. After each pass, and a pause of --settle seconds, it reads the API process's
resident memory (VmRSS; vLLM's engine process is not counted: its multimodal cache has a fixed budget).

Memory that something keeps per request grows with every pass; a high-water mark of the allocator stays level.
The default series repeats each kind of pass, so the two read differently.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_captions import CAPTION_STYLE, batch_pass, caption_specs, data_urls, make_images, measured, pass_summary
from bench_common import REPO, machine_info, resident_mib, wait_ready, write_json
from bench_serving import make_services

from server.api.captions.service import DEFAULT_MAX_TOKENS

DEFAULT_PASSES = "captions:8,captions:32,captions:8,captions:8,batch,batch,batch"


def parse_passes(text: str) -> list[tuple[str, int]]:
    """``captions:8,batch`` -> [("captions", 8), ("batch", 0)]; a ValueError names the first bad item."""
    passes = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        kind, _, level = item.partition(":")
        if kind == "batch" and not level:
            passes.append(("batch", 0))
        elif kind == "captions" and level.isdigit() and int(level) >= 1:
            passes.append(("captions", int(level)))
        else:
            raise ValueError(f"expected captions:N (N >= 1) or batch, got {item!r}")
    if not passes:
        raise ValueError("no passes")
    return passes


def one_pass(kind: str, concurrency: int, service: Any, urls: Sequence[tuple[str, str]], model: str,
             settle_s: float) -> dict[str, Any]:
    max_tokens = DEFAULT_MAX_TOKENS[CAPTION_STYLE]
    if kind == "captions":
        found = measured(service, caption_specs(service.base_url, list(urls), max_tokens), concurrency, 0)
    else:
        got = asyncio.run(batch_pass(service, urls, max_tokens, model=model, probe_every_s=10.0, poll_s=0.5))
        found = pass_summary(got["results"], got["wall_s"], cpu_s=0.0)  # CPU is not this benchmark's question
    time.sleep(settle_s)
    return {"kind": kind, "concurrency": concurrency, "images_per_s": found["images_per_s"], "errors": found["errors"],
            "api_rss_mib": resident_mib(service.process.pid)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="tiny-mistral3-vllm")
    parser.add_argument("--images", type=int, default=200, help="photos in the set, half 12 MP and half 1-2 MP")
    parser.add_argument("--passes", default=DEFAULT_PASSES, help="captions:N (N in flight) or batch, in order")
    parser.add_argument("--batch-concurrency", type=int, default=16, help="MSSERVE_BATCH_CONCURRENCY")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between a pass's end and the reading")
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--image-cache", type=Path, default=REPO / "bench-results" / "caption-images")
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench-data" / "captions-memory.json")
    args = parser.parse_args(argv)
    try:
        passes = parse_passes(args.passes)
    except ValueError as exc:
        parser.error(f"--passes: {exc}")
    if args.images < 1 or args.batch_concurrency < 1:
        parser.error("--images and --batch-concurrency must be at least 1")
    info = machine_info()
    images = make_images(args.images, args.seed, args.image_cache)
    state = Path(tempfile.mkdtemp(prefix="bench-caption-memory-state-"))
    ours, _ = make_services(Path(sys.executable), args.profile, REPO / "bench-results" / "caption-memory-logs")
    ours.env.update(MSSERVE_STATE_DIR=str(state), MSSERVE_BATCH_CONCURRENCY=str(args.batch_concurrency))
    from server.config import load_profile

    model = load_profile(args.profile).model_name
    results = []
    try:
        ours.start()
        wait_ready([ours], args.ready_timeout)
        assert ours.process is not None
        ready_mib = resident_mib(ours.process.pid)
        print(f"ready: API process {ready_mib:.0f} MiB")
        for number, (kind, concurrency) in enumerate(passes):
            found = one_pass(kind, concurrency, ours, data_urls(images, 300 + number), model, args.settle)
            results.append(found)
            print(f"  pass {number} {kind}{f' at {concurrency}' if concurrency else ''}: "
                  f"{found['images_per_s']:.2f} images/s, errors {found['errors']}, "
                  f"API process {found['api_rss_mib']:.0f} MiB")
    finally:
        ours.stop()
        shutil.rmtree(state, ignore_errors=True)
    command = ["scripts/bench_caption_memory.py", *(sys.argv[1:] if argv is None else argv)]
    write_json(args.out, {"benchmark": "captions-memory", "machine": info, "command": " ".join(command),
                          "images": len(images), "batch_concurrency": args.batch_concurrency,
                          "ready_mib": ready_mib, "passes": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
