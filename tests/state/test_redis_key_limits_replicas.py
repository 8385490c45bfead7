"""Three replicas (the real app, each behind its own uvicorn on a loopback port, in its own thread and event loop)
share one redis-server: one key's requests per minute and its requests in flight hold across them together,
whichever replica a request lands on; with Redis killed each replica still holds the limits on its own, and nothing
is a 500.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from server.app import create_app
from server.config import Settings
from tests.ops.conftest import CHAT, metric
from tests.ops.paced_engine import PacedEngine
from tests.redis_server import RedisServer

ALICE, CAROL = "sk-alice-0123456789abcdef", "sk-carol-0123456789abcdef"
KEYS = f"alice:{ALICE},carol:{CAROL}"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Replica:
    """One app with a PacedEngine whose streams hold after their first chunk while the gate file is missing."""

    def __init__(self, settings: Settings, gate: Path, clock: Clock) -> None:
        self.engine = PacedEngine(chunks=4, gate=gate)
        self.app = create_app(settings, engine=self.engine)
        store: Any = self.app.state.key_limits
        store.clock = clock  # windows and leases: the test's clock (the fallback keeps its own monotonic one)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "replica did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


async def chat(client: httpx.AsyncClient, replica: Replica, key: str) -> httpx.Response:
    return await client.post(f"{replica.url}/v1/chat/completions", json=CHAT,
                             headers={"authorization": f"Bearer {key}"})


async def held_stream(client: httpx.AsyncClient, replica: Replica, key: str) -> asyncio.Task[int]:
    """A streamed request that is in flight (its first chunk came back) when this returns; the task ends with it."""
    started = asyncio.Event()

    async def run() -> int:
        async with client.stream("POST", f"{replica.url}/v1/chat/completions", json={**CHAT, "stream": True},
                                 headers={"authorization": f"Bearer {key}"}) as response:
            started.set()
            assert response.status_code == 200
            body = (await response.aread()).decode()
            assert "[DONE]" in body and '"error"' not in body
            return response.status_code

    task = asyncio.create_task(run())
    await asyncio.wait_for(started.wait(), 30)
    return task


async def test_limits_hold_across_three_replicas_and_each_replica_holds_them_alone_without_redis(
        redis_server: RedisServer, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()  # open: answers run through
    clock = Clock()
    settings = [Settings(host="127.0.0.1", port=0, api_keys=KEYS, key_rpm_limit=3, key_rpm_overrides="carol=0",
                         max_concurrent_per_key=2, redis_url=redis_server.url, redis_timeout_s=0.3,
                         metrics_open=True, router_learning=False, state_dir=tmp_path / f"state{index}")
                for index in range(3)]
    replicas = [Replica(s, gate, clock) for s in settings]
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            # Requests per minute, one count: alice's 4th request in the minute is refused wherever it lands.
            answers = [await chat(client, r, ALICE) for r in replicas]
            assert [a.status_code for a in answers] == [200, 200, 200]
            assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0"]  # one count
            for replica in replicas:
                refused = await chat(client, replica, ALICE)
                assert refused.status_code == 429
                assert refused.json()["error"]["code"] == "requests_per_minute_exceeded"
                assert refused.headers["retry-after"] == "60"  # all three came in this (frozen) second

            # A minute later, requests in flight, one count: alice's two held streams on two replicas fill her cap of
            # 2 on the third; the refused one is not counted in her minute, so the one after the streams is her 3rd.
            clock.now += 60
            gate.unlink()
            held = [await held_stream(client, replicas[0], ALICE), await held_stream(client, replicas[1], ALICE)]
            busy = await chat(client, replicas[2], ALICE)
            assert busy.status_code == 429 and busy.json()["error"]["code"] == "too_many_concurrent_requests"
            assert replicas[2].engine.started == 1  # the refused request never reached the engine
            gate.touch()
            assert [await task for task in held] == [200, 200]
            assert (await chat(client, replicas[2], ALICE)).status_code == 200  # finished streams freed their leases
            assert (await chat(client, replicas[0], ALICE)).json()["error"]["code"] == "requests_per_minute_exceeded"

            # Redis goes away: each replica counts alice's minute on its own (3 each), never unlimited, never a 500.
            redis_server.kill()
            for replica in replicas:
                codes = [(await chat(client, replica, ALICE)).status_code for _ in range(4)]
                assert codes == [200, 200, 200, 429]
            # ...and the per-process cap still holds carol's requests in flight on each replica.
            gate.unlink()
            held = [await held_stream(client, replicas[0], CAROL) for _ in range(2)]
            busy = await chat(client, replicas[0], CAROL)
            assert busy.status_code == 429 and busy.json()["error"]["code"] == "too_many_concurrent_requests"
            gate.touch()
            assert [await task for task in held] == [200, 200]
            scrape = (await client.get(f"{replicas[0].url}/metrics")).text
            assert metric(scrape, "msserve_key_limits_shared_up") == 0
            assert (metric(scrape, "msserve_key_limits_fallbacks_total") or 0) >= 4
            assert metric(scrape, "msserve_key_limit_refusals_total", key="alice", limit="requests") == 3
    finally:
        gate.touch()
        for replica in replicas:
            replica.stop()
