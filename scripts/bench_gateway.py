"""The latency our escalation path adds, against a LiteLLM proxy in front of the same fake Azure backend.

    .venv-bench/bin/python scripts/bench_gateway.py [--rounds 3] [--requests 200] [--concurrency 8]

(.venv-bench comes from scripts/bench_env.sh: LiteLLM pinned, proxy dependencies, this project.)

Three targets, all on 127.0.0.1, driven with the same chat requests (non-streamed unless --stream) at a fixed
concurrency, in alternating order each round:
  direct   the fake Azure endpoint (tests/fakes/fake_azure.py, zero-delay answers), in its own process
  ours     `python -m server serve --profile tiny-mistral3` with MSSERVE_AZURE_* pointing at the fake,
           MSSERVE_ROUTER_THRESHOLD=0.0 and the header `x-msserve-route: azure` (the local engine is loaded
           but never used)
  litellm  `litellm --config ...` (the proxy, one worker) with an `azure/` model whose api_base is the fake
Reports requests/s, p50/p99 latency, and the added latency (gateway minus direct) p50/p99 of each gateway.
Target: our added p50 at most a tenth of LiteLLM's.

Refuses to run when the LiteLLM venv holds an unexpected .pth file (see bench_common.refuse_pth).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (
    REPO,
    RequestResult,
    RequestSpec,
    Service,
    cpu_seconds,
    free_port,
    machine_info,
    our_server,
    package_versions,
    print_table,
    py_spy,
    refuse_pth,
    results_json,
    run_load,
    wait_ready,
    write_json,
)
from bench_stats import percentile, ratio, summarize

AZURE_KEY = "bench-azure-key"
DEPLOYMENT = "gpt-4o"
API_VERSION = "2024-10-21"
FAKE_MAIN = (
    "import sys, uvicorn; sys.path.insert(0, sys.argv[1]); from tests.fakes.fake_azure import FakeAzure; "
    "uvicorn.run(FakeAzure(api_key=sys.argv[2], deployment=sys.argv[3]).app, host='127.0.0.1', "
    "port=int(sys.argv[4]), log_level='warning', access_log=False)"
)
LITELLM_CONFIG = """\
model_list:
  - model_name: {deployment}
    litellm_params:
      model: azure/{deployment}
      api_base: {api_base}
      api_key: {api_key}
      api_version: "{api_version}"
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
"""


def make_services(server_python: Path, litellm_python: Path, work: Path, profile: str
                  ) -> tuple[Service, Service, Service, str]:
    fake_port, litellm_port = free_port(), free_port()
    fake = Service("direct", [sys.executable, "-c", FAKE_MAIN, str(REPO), AZURE_KEY, DEPLOYMENT, str(fake_port)],
                   fake_port, work / "fake_azure.log", ready_path="/", ready_codes=(200, 404, 405))
    ours_env = {
        "MSSERVE_AZURE_ENDPOINT": f"{fake.base_url}/openai/v1/",
        "MSSERVE_AZURE_API_KEY": AZURE_KEY,
        "MSSERVE_AZURE_DEPLOYMENT": DEPLOYMENT,
        "MSSERVE_ROUTER_THRESHOLD": "0.0",
    }
    ours = our_server(server_python, profile, "ours", work, ours_env)
    config = work / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(deployment=DEPLOYMENT, api_base=fake.base_url, api_key=AZURE_KEY,
                                            api_version=API_VERSION))
    master_key = "sk-" + secrets.token_urlsafe(32)
    litellm_env = {
        "LITELLM_MASTER_KEY": master_key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start-up (loopback only)
        "LITELLM_TELEMETRY": "False",
    }
    litellm_bin = litellm_python.parent / "litellm"
    litellm = Service("litellm", [str(litellm_bin), "--config", str(config), "--host", "127.0.0.1", "--port",
                                  str(litellm_port), "--num_workers", "1"], litellm_port, work / "litellm.log",
                      env=litellm_env, ready_path="/health/liveliness")
    return fake, ours, litellm, master_key


def bodies(count: int, offset: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Request {n}: say hello to the benchmark."}]
            for n in range(offset, offset + count)]


def specs(target: str, services: dict[str, Service], master_key: str, messages: list[list[dict[str, str]]],
          max_tokens: int, stream: bool) -> list[RequestSpec]:
    base: dict[str, Any] = {"max_tokens": max_tokens}
    if stream:
        base.update(stream=True, stream_options={"include_usage": True})
    service = services[target]
    if target == "direct":
        url, headers, extra = f"{service.base_url}/openai/v1/chat/completions", {"api-key": AZURE_KEY}, {
            "model": DEPLOYMENT}
    elif target == "ours":
        url, headers, extra = f"{service.base_url}/v1/chat/completions", {"x-msserve-route": "azure"}, {}
    else:
        url, headers, extra = f"{service.base_url}/v1/chat/completions", {
            "authorization": f"Bearer {master_key}"}, {"model": DEPLOYMENT}
    return [RequestSpec(url=url, body={**base, **extra, "messages": m}, headers=headers) for m in messages]


def drive(load: list[RequestSpec], concurrency: int) -> None:
    asyncio.run(run_load(load, concurrency))


def added(gateway: list[RequestResult], direct: list[RequestResult], q: float) -> float:
    lat = [r.e2e_s for r in gateway if r.ok]
    base = [r.e2e_s for r in direct if r.ok]
    return (percentile(lat, q) - percentile(base, q)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="requests per round and target")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="streamed requests (adds TTFT)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured requests per target first")
    parser.add_argument("--profile", default="tiny-mistral3", help="our server's profile (its engine stays idle)")
    parser.add_argument("--server-python", type=Path, default=Path(sys.executable),
                        help="interpreter for our server (needs torch for the transformers profile)")
    parser.add_argument("--litellm-python", type=Path, default=Path(sys.executable),
                        help="interpreter of the venv with litellm (its bin/ holds the `litellm` command)")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "gateway.json")
    parser.add_argument("--py-spy", type=Path, default=None,
                        help="folder for py-spy stacks of both gateways during one extra round (not counted)")
    args = parser.parse_args()

    refuse_pth(args.litellm_python)
    info = machine_info()
    info["versions"] = {
        "litellm": package_versions(args.litellm_python, ["litellm", "fastapi", "uvicorn", "uvloop", "openai",
                                                          "httpx", "aiohttp"]),
        "ours": package_versions(args.server_python, ["mistral-small-server", "fastapi", "uvicorn", "uvloop",
                                                      "openai", "httpx", "starlette"]),
    }
    work = args.out.parent / "gateway-logs"
    work.mkdir(parents=True, exist_ok=True)
    fake, ours, litellm, master_key = make_services(args.server_python, args.litellm_python, work, args.profile)
    services = {"direct": fake, "ours": ours, "litellm": litellm}
    print(f"load average at start: {info['loadavg_start']}")
    started = time.monotonic()
    per_target: dict[str, list[RequestResult]] = {name: [] for name in services}
    walls = dict.fromkeys(services, 0.0)
    cpu = dict.fromkeys(services, 0.0)  # CPU seconds of each target's process tree during its rounds
    rounds: list[dict[str, Any]] = []
    try:
        fake.start()
        wait_ready([fake], 60)
        ours.start()
        litellm.start()
        wait_ready([ours, litellm], args.ready_timeout)
        for name in services:
            warm = specs(name, services, master_key, bodies(args.warmup, 100_000),
                         args.max_tokens, args.stream)
            results, _ = asyncio.run(run_load(warm, args.concurrency))
            bad = [r.error for r in results if not r.ok]
            if bad:
                raise RuntimeError(f"{name} warm-up failed: {bad[0]}; log {services[name].log_path}")
        names = list(services)
        for r in range(args.rounds):
            messages = bodies(args.requests, r * args.requests)
            for name in names[r % 3:] + names[: r % 3]:  # rotate the order each round
                pid = services[name].process.pid  # type: ignore[union-attr]
                cpu_before = cpu_seconds(pid, tree=True)
                results, wall = asyncio.run(run_load(specs(name, services, master_key, messages, args.max_tokens,
                                                           args.stream), args.concurrency))
                used = cpu_seconds(pid, tree=True) - cpu_before
                per_target[name] += results
                walls[name] += wall
                cpu[name] += used
                summary = summarize(results, wall)
                summary["cpu_ms_per_request"] = used * 1e3 / max(1, len(results))
                rounds.append({"round": r, "target": name, "loadavg": list(os.getloadavg()), **summary})
                print(f"  round {r} {name:7s} {summary['requests_per_s']:7.1f} req/s  p50 {summary['e2e_p50_ms']:6.1f}"
                      f" ms  p99 {summary['e2e_p99_ms']:6.1f} ms  CPU {summary['cpu_ms_per_request']:.2f} ms/request"
                      f"  errors {summary['errors']}")
        if args.py_spy:
            profiled = bodies(args.requests, 200_000)
            for name in ("ours", "litellm"):
                pid = services[name].process.pid  # type: ignore[union-attr]
                load = specs(name, services, master_key, profiled, args.max_tokens, args.stream)
                py_spy(pid, args.py_spy / f"gateway-{name}.collapsed.txt",
                       functools.partial(drive, load, args.concurrency))
    finally:
        for service in (litellm, ours, fake):
            service.stop()

    totals = {name: summarize(per_target[name], walls[name]) for name in services}
    for name, total in totals.items():
        total["cpu_ms_per_request"] = cpu[name] * 1e3 / max(1, total["requests"])
    added_ms = {name: {"p50": added(per_target[name], per_target["direct"], 50),
                       "p99": added(per_target[name], per_target["direct"], 99)} for name in ("ours", "litellm")}
    share = ratio(added_ms["ours"]["p50"], added_ms["litellm"]["p50"])
    info["loadavg_end"] = list(os.getloadavg())
    write_json(args.out, {
        "benchmark": "gateway", "machine": info, "args": {k: str(v) for k, v in vars(args).items()},
        "commands": {name: s.command for name, s in services.items()}, "totals": totals, "added_ms": added_ms,
        "ours_added_p50_over_litellm": share, "target_met": share <= 0.1, "rounds": rounds,
        "elapsed_s": time.monotonic() - started, "results": {n: results_json(per_target[n]) for n in per_target},
    })
    print(f"\nwrote {args.out}; load average {info['loadavg_start']} -> {info['loadavg_end']}; "
          f"{args.concurrency} concurrent, {'streamed' if args.stream else 'non-streamed'}")
    rows: list[tuple[object, ...]] = []
    for name in services:
        t = totals[name]
        extra = added_ms.get(name, {"p50": float("nan"), "p99": float("nan")})
        rows.append((name, t["requests_per_s"], t["e2e_p50_ms"], t["e2e_p99_ms"], extra["p50"], extra["p99"],
                     t["cpu_ms_per_request"], t["errors"]))
    print_table(("target", "requests/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "CPU ms/request",
                 "errors"), rows)
    print(f"ours added p50 / LiteLLM added p50 = {share:.3f} (target <= 0.1: {'met' if share <= 0.1 else 'NOT met'})")


if __name__ == "__main__":
    main()
