"""Slow clients: a trickled body is cut off with 408 and never holds a concurrency slot; honest uploads pass."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.config import Settings
from server.errors import RateLimitError
from server.middleware.body_limit import BodySizeLimitMiddleware
from server.middleware.concurrency import Limiter
from tests.conftest import LOOPBACK, LiveServer, stop_server
from tests.fakes.clock import Clock
from tests.ops.conftest import CHAT, make_client, metric, paced_engine, start_scripted_server  # noqa: F401


async def _run(middleware_kwargs: dict[str, Any], chunks: list[bytes], seconds_per_chunk: float) -> tuple[
        list[dict[str, Any]], bytes]:
    """Feed chunks through the middleware, the clock moving seconds_per_chunk per chunk; what the client saw."""
    clock = Clock(100.0)
    sent: list[dict[str, Any]] = []
    got = bytearray()
    queue = list(chunks)

    async def receive() -> dict[str, Any]:
        if not queue:
            return {"type": "http.disconnect"}
        clock.now += seconds_per_chunk
        body = queue.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(queue)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def app(scope: Any, app_receive: Any, app_send: Any) -> None:
        while True:
            message = await app_receive()
            if message["type"] != "http.request":
                return
            got.extend(message["body"])
            if not message["more_body"]:
                break
        await app_send({"type": "http.response.start", "status": 200, "headers": []})
        await app_send({"type": "http.response.body", "body": b"ok"})

    middleware = BodySizeLimitMiddleware(app, clock=clock, **middleware_kwargs)
    await middleware({"type": "http", "headers": []}, receive, send)
    return sent, bytes(got)


async def test_a_trickle_is_cut_off_with_408_after_the_grace_period() -> None:
    limits = {"max_bytes": 10**6, "min_bytes_per_s": 1000.0, "grace_s": 5.0}
    sent, got = await _run(limits, [b"x"] * 100, seconds_per_chunk=1.0)  # 1 byte/s
    assert sent[0]["status"] == 408
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "request_body_timeout"
    assert (b"connection", b"close") in sent[0]["headers"]
    assert 0 < len(got) < 100  # the grace period let some in; the rest was never read


async def test_fast_uploads_and_early_stalls_paid_for_by_speed_pass() -> None:
    limits = {"max_bytes": 10**7, "min_bytes_per_s": 1000.0, "grace_s": 5.0}
    sent, got = await _run(limits, [b"y" * 65536] * 100, seconds_per_chunk=0.01)
    assert (sent[0]["status"], len(got)) == (200, 6_553_600)
    # 4 s per chunk is far below the floor, but each 64 KiB chunk buys 65 s of it.
    sent, got = await _run(limits, [b"z" * 65536] * 5, seconds_per_chunk=4.0)
    assert sent[0]["status"] == 200


async def test_rate_floor_off_when_zero() -> None:
    sent, _ = await _run({"max_bytes": 10**6, "min_bytes_per_s": 0.0}, [b"x"] * 50, seconds_per_chunk=60.0)
    assert sent[0]["status"] == 200


def test_per_key_cap_is_on_by_default() -> None:
    settings = Settings()
    assert settings.max_concurrent_per_key == 64
    assert Limiter.from_settings(settings).per_key == 64
    assert Limiter.from_settings(Settings(max_concurrent_per_key=0)).per_key is None


async def test_default_per_key_cap_refuses_the_65th_request_of_one_key() -> None:
    limiter = Limiter.from_settings(Settings(max_concurrent_requests=1000))
    for _ in range(64):
        await limiter.acquire("tenant")
    with pytest.raises(RateLimitError) as refused:
        await limiter.acquire("tenant")
    assert refused.value.code == "too_many_concurrent_requests"
    await limiter.acquire("other")  # another tenant is not affected


async def test_bodies_waiting_for_a_slot_are_bounded_in_bytes_and_per_key() -> None:
    limiter = Limiter(max_running=1, max_waiting=0, per_key=2, max_buffered_bytes=1000)
    limiter.start_reading("a")
    limiter.start_reading("a")
    with pytest.raises(RateLimitError) as per_key:
        limiter.start_reading("a")  # bodies arriving count toward the key's cap
    assert per_key.value.code == "too_many_concurrent_requests"
    for _ in range(50):
        limiter.start_reading(None)  # tricklers: many bodies, few bytes, no count cap
    limiter.buffer(600)
    with pytest.raises(RateLimitError) as full:
        limiter.buffer(500)
    assert full.value.code == "queue_full" and full.value.headers["connection"] == "close"
    limiter.unbuffer(600)
    limiter.buffer(1000)


async def test_large_bodies_past_the_buffer_budget_are_refused(make_client) -> None:  # noqa: F811
    client = make_client(max_buffered_body_bytes=50_000)
    small = await client.post("/v1/chat/completions", json=CHAT)
    assert small.status_code == 200
    long_message = [{"role": "user", "content": "x" * 60_000}]
    big = await client.post("/v1/chat/completions", json={**CHAT, "messages": long_message})
    assert big.status_code == 429
    assert big.json()["error"]["code"] == "queue_full"
    assert client.app.state.limiter.buffered_bytes == 0  # nothing left counted
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


# -- a real trickling client on loopback --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_scripted_server(tmp_path_factory.mktemp("slow"), {
        "MSSERVE_MAX_CONCURRENT_REQUESTS": "1", "MSSERVE_MAX_WAITING_REQUESTS": "0",
        "MSSERVE_BODY_MIN_BYTES_PER_S": "2000", "MSSERVE_BODY_MIN_RATE_GRACE_S": "3",
    })
    yield server
    stop_server(server)


class Trickler(threading.Thread):
    """Sends a chat request's headers, then its body 5 bytes at a time; keeps what the server answers."""

    def __init__(self, port: int, declared: int = 50_000) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection((LOOPBACK, port), timeout=30)
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {LOOPBACK}\r\ncontent-type: application/json\r\n"
                f"content-length: {declared}\r\n\r\n")
        self.sock.sendall(head.encode() + b'{"messages": [{"role": "user", "content": "')
        self.answer = b""

    def run(self) -> None:
        try:
            for _ in range(600):  # bounded: at most ~60 s of trickling
                self.sock.sendall(b"xxxxx")
                time.sleep(0.1)
        except OSError:
            pass  # the server closed the connection: what we want
        self.sock.settimeout(10)
        try:
            while chunk := self.sock.recv(65536):
                self.answer += chunk
        except OSError:
            pass
        self.sock.close()


def test_trickling_clients_hold_no_slot_and_get_408(one_slot_server: LiveServer) -> None:
    port = int(one_slot_server.base_url.rsplit(":", 1)[1])
    tricklers = [Trickler(port) for _ in range(3)]
    for trickler in tricklers:
        trickler.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until the server has all three bodies arriving
        if metric(httpx.get(f"{one_slot_server.base_url}/metrics").text, "msserve_server_reading_requests") == 3:
            break
        time.sleep(0.05)
    assert metric(httpx.get(f"{one_slot_server.base_url}/metrics").text, "msserve_server_reading_requests") == 3
    # Only one slot, three clients trickling: an honest request is still served.
    honest = httpx.post(f"{one_slot_server.v1}/chat/completions", json=CHAT, timeout=30)
    assert honest.status_code == 200, honest.text
    for trickler in tricklers:
        trickler.join(timeout=60)
        status_line = trickler.answer.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 408"), trickler.answer[:200]
        assert b"request_body_timeout" in trickler.answer


def test_a_large_honest_upload_passes_the_rate_floor(one_slot_server: LiveServer) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "w" * 3_000_000}]}
    response = httpx.post(f"{one_slot_server.v1}/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
