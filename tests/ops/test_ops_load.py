"""200 concurrent streaming clients for about 30 s against a real server process with a paced engine.

Checks: every request either streams to [DONE] or gets the intended 429 + Retry-After (nothing else), the
server's metrics count exactly what the clients saw, and its memory stays flat (RSS after a warm-up round
versus after the run). The duration is OPS_LOAD_SECONDS (default 30).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import LiveServer, stop_server
from tests.ops.conftest import CHAT, metric, start_scripted_server

CLIENTS = 200
KEY = "sk-load-0123456789ab"
RSS_GROWTH_LIMIT = 64 * 1024 * 1024


async def client_loop(client: httpx.AsyncClient, until: float, seen: collections.Counter[str],
                      problems: list[str]) -> None:
    body = {**CHAT, "stream": True}
    while time.monotonic() < until:
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code == 429:
                    await response.aread()
                    seen["429"] += 1
                    if "retry-after" not in response.headers:
                        problems.append("429 without Retry-After")
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                    continue
                events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
                if response.status_code != 200 or not events or events[-1] != "data: [DONE]":
                    problems.append(f"status {response.status_code}, last event {events[-1:]}")
                    continue
                seen["200"] += 1
        except httpx.HTTPError as exc:
            problems.append(f"{type(exc).__name__}: {exc}")


async def run_clients(server: LiveServer, seconds: float) -> tuple[collections.Counter[str], list[str]]:
    seen: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    limits = httpx.Limits(max_connections=CLIENTS + 10, max_keepalive_connections=CLIENTS + 10)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=60,
                                 headers={"authorization": f"Bearer {KEY}"}) as client:
        until = time.monotonic() + seconds
        await asyncio.gather(*(client_loop(client, until, seen, problems) for _ in range(CLIENTS)))
    return seen, problems


def test_200_streaming_clients(tmp_path: Path) -> None:
    seconds = float(os.environ.get("OPS_LOAD_SECONDS", "30"))
    server = start_scripted_server(tmp_path, {
        "OPS_CHUNKS": "10", "OPS_DELAY_S": "0.2",  # 2 s per stream
        "MSSERVE_API_KEYS": f"load:{KEY}", "MSSERVE_MAX_CONCURRENT_REQUESTS": "150",
        "MSSERVE_MAX_WAITING_REQUESTS": "20", "MSSERVE_QUEUE_TIMEOUT_S": "20", "MSSERVE_LOG_LEVEL": "warning",
    })
    try:
        process = psutil.Process(server.process.pid)
        warm_seen, warm_problems = asyncio.run(run_clients(server, 5))
        rss_before = process.memory_info().rss
        seen, problems = asyncio.run(run_clients(server, seconds))
        rss_after = process.memory_info().rss
        metrics = httpx.get(f"{server.base_url}/metrics", headers={"api-key": KEY}).text
    finally:
        stop_server(server)
    assert warm_problems == [] and problems == [], (problems or warm_problems)[:5]
    assert seen["200"] > CLIENTS and seen["429"] > 0  # the limits were reached, and the queue kept serving
    endpoint = "/v1/chat/completions"
    served = metric(metrics, "msserve_requests_total", endpoint=endpoint, tier="local", status="200")
    limited = metric(metrics, "msserve_requests_total", endpoint=endpoint, tier="none", status="429")
    assert served == warm_seen["200"] + seen["200"]
    assert limited == warm_seen["429"] + seen["429"]
    assert metric(metrics, "msserve_server_running_requests") == 0
    assert metric(metrics, "msserve_engine_running_requests") == 0
    growth = rss_after - rss_before
    print(f"load: {seen['200']} streams, {seen['429']} x 429 in {seconds:g}s; RSS {rss_before / 2**20:.0f} -> "
          f"{rss_after / 2**20:.0f} MiB")
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.0f} MiB"
