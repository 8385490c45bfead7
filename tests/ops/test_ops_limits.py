"""Body size (413 while streaming in), concurrency slots, wait queue, per-key cap (429 + Retry-After), draining."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.errors import EngineUnavailableError, RateLimitError
from server.middleware.concurrency import Limiter
from server.serving import begin_drain
from tests.ops.conftest import CHAT


async def test_declared_length_over_the_limit_is_413(make_client) -> None:
    client = make_client(max_request_bytes=1000)
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]})
    response = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_streamed_body_is_cut_off_at_the_limit(make_client) -> None:
    client = make_client(max_request_bytes=10_000)
    sent = 0

    async def chunked():  # no content-length: only counting the bytes can stop it
        nonlocal sent
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(1000):
            sent += 1
            yield b"x" * 1000
        yield b'"}]}'

    response = await client.post("/v1/chat/completions", content=chunked(),
                                  headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert sent < 20  # refused after about 10 KB, not after reading the whole megabyte


async def test_bodies_under_the_limit_pass(make_client) -> None:
    client = make_client(max_request_bytes=10_000)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_full_server_answers_429_with_retry_after(make_client, paced_engine) -> None:
    paced_engine.delay_s = 0.1
    client = make_client(max_concurrent_requests=1, max_waiting_requests=0, retry_after_s=3)
    limiter: Limiter = client.app.state.limiter
    first = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    while limiter.running == 0:
        await asyncio.sleep(0.01)
    second = await client.post("/v1/chat/completions", json=CHAT)
    assert second.status_code == 429
    assert second.headers["retry-after"] == "3"
    assert second.json()["error"]["code"] == "queue_full"
    assert (await first).status_code == 200
    assert limiter.running == 0
    assert (await client.get("/health")).status_code == 200  # only model requests take slots


async def test_waiting_request_gets_the_next_slot(make_client, paced_engine) -> None:
    paced_engine.delay_s = 0.05
    client = make_client(max_concurrent_requests=1, max_waiting_requests=4)
    responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=CHAT) for _ in range(4)))
    assert [r.status_code for r in responses] == [200] * 4


async def test_limiter_queue_order_timeout_and_per_key_cap() -> None:
    limiter = Limiter(max_running=1, max_waiting=1, per_key=2, queue_timeout_s=0.2, retry_after_s=1)
    await limiter.acquire("a")
    waiter = asyncio.create_task(limiter.acquire("a"))
    await asyncio.sleep(0)
    assert (limiter.running, limiter.waiting) == (1, 1)
    with pytest.raises(RateLimitError) as per_key:
        await limiter.acquire("a")  # "a" has 2 in flight (1 running, 1 waiting)
    assert per_key.value.code == "too_many_concurrent_requests"
    with pytest.raises(RateLimitError) as full:
        await limiter.acquire("b")  # the queue holds 1
    assert full.value.code == "queue_full" and full.value.headers == {"retry-after": "1"}
    limiter.release("a")
    await waiter  # the slot moved to the waiter
    assert (limiter.running, limiter.waiting) == (1, 0)
    with pytest.raises(RateLimitError) as timeout:
        await limiter.acquire("b")
    assert timeout.value.code == "queue_timeout"
    limiter.release("a")
    assert (limiter.running, limiter.waiting) == (0, 0)


async def test_cancelled_waiter_leaves_no_trace() -> None:
    limiter = Limiter(max_running=1, max_waiting=2, queue_timeout_s=10)
    await limiter.acquire(None)
    waiter = asyncio.create_task(limiter.acquire(None))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limiter.release(None)
    assert (limiter.running, limiter.waiting) == (0, 0)


async def test_drain_sends_waiters_and_newcomers_away() -> None:
    limiter = Limiter(max_running=1, max_waiting=2, queue_timeout_s=10, retry_after_s=2)
    await limiter.acquire(None)
    waiter = asyncio.create_task(limiter.acquire(None))
    await asyncio.sleep(0)
    limiter.drain()
    with pytest.raises(EngineUnavailableError) as waiting:
        await waiter
    assert waiting.value.code == "server_draining" and waiting.value.headers == {"retry-after": "2"}
    with pytest.raises(EngineUnavailableError):
        await limiter.acquire(None)
    limiter.release(None)  # the running request still finishes normally
    assert limiter.running == 0


async def test_draining_app_answers_503(make_client) -> None:
    client = make_client()
    begin_drain(client.app)
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "server_draining"
    assert response.headers["retry-after"] == "1"
    assert (await client.get("/ready")).status_code == 503
    assert (await client.get("/health")).status_code == 200
