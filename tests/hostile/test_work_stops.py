"""Work never outlives its client or its deadline: non-streamed chat, captions, image fetches, the HF engine."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.app import create_app
from server.config import Settings, load_profile
from server.engines.hf import HFEngine
from server.errors import DeadlineExceededError
from server.types import GenerationRequest, Message, SamplingParams, TextPart
from tests.conftest import LOOPBACK, LiveServer
from tests.images import png_url
from tests.ops.conftest import CHAT, log_lines, make_client, paced_engine  # noqa: F401  (fixtures)

LONG = {"max_tokens": 4000, "temperature": 1.0, "seed": 1}  # minutes of work for the tiny model on CPU


def engine_counts(server: LiveServer) -> tuple[int, int]:
    engine = httpx.get(f"{server.base_url}/ready").json()["engine"]
    return engine["running"], engine["waiting"]


def wait_for(predicate: Any, limit_s: float = 60.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def post_and_leave(server: LiveServer, path: str, body: dict[str, Any]) -> str:
    """Send a non-streamed request over a raw socket, wait until the engine works on it, then hang up."""
    request_id = uuid.uuid4().hex
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nhost: {LOOPBACK}\r\ncontent-type: application/json\r\n"
            f"x-request-id: {request_id}\r\ncontent-length: {len(payload)}\r\n\r\n").encode()
    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
        sock.sendall(head + payload)
        assert wait_for(lambda: engine_counts(server)[0] == 1), "the engine never started the request"
    return request_id


def access_line(server: LiveServer, request_id: str) -> dict[str, Any] | None:
    return next((line for line in log_lines(server) if line.get("request_id") == request_id), None)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "go on forever"}], **LONG}),
    ("/v1/captions", {"image_urls": [png_url((64, 48))], "style": "detailed", "max_tokens": 4000, "temperature": 1.0}),
], ids=["chat", "captions"])
def test_a_non_streamed_request_stops_the_engine_when_its_client_leaves(live_server: LiveServer, path: str,
                                                                        body: dict[str, Any]) -> None:
    request_id = post_and_leave(live_server, path, body)
    assert wait_for(lambda: engine_counts(live_server) == (0, 0)), "the engine kept working for nobody"
    assert wait_for(lambda: access_line(live_server, request_id) is not None, 10)
    line = access_line(live_server, request_id)
    assert line is not None and line["outcome"] == "client_closed"
    completion = httpx.post(f"{live_server.v1}/chat/completions", timeout=60,
                            json={"messages": [{"role": "user", "content": "still there?"}], "max_tokens": 2})
    assert completion.status_code == 200


# -- deadlines with the real engine, in process --------------------------------------------------------------------


@pytest.fixture(scope="module")
async def hf_engine(tiny_model: Path) -> AsyncIterator[HFEngine]:
    engine = HFEngine(load_profile("tiny-mistral3"), model_dir=tiny_model)
    await engine.start()
    yield engine
    await engine.stop()


async def wait_idle(engine: HFEngine) -> None:
    for _ in range(600):
        if engine.health().running == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the engine is still generating")


async def test_hf_engine_keeps_the_deadline_while_generating(hf_engine: HFEngine) -> None:
    request = GenerationRequest(
        request_id="deadline", messages=[Message(role="user", content=[TextPart(text="go on forever")])],
        sampling=SamplingParams(max_tokens=4000, temperature=1.0, seed=1), deadline=time.monotonic() + 1.0,
    )
    received: list[Any] = []
    with pytest.raises(DeadlineExceededError) as exceeded:
        async for chunk in hf_engine.generate(request):
            received.append(chunk)
    assert exceeded.value.code == "deadline_exceeded"
    assert all(chunk.finish_reason is None for chunk in received)  # cut off, not finished
    await wait_idle(hf_engine)  # and the worker thread let go of the model


async def test_past_its_deadline_a_chat_request_is_504_and_frees_the_engine(hf_engine: HFEngine) -> None:
    app = create_app(Settings(host=LOOPBACK, port=0, request_timeout_s=1.0), engine=hf_engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=120) as client:
        body = {"messages": [{"role": "user", "content": "go on forever"}], **LONG}
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "deadline_exceeded"
        await wait_idle(hf_engine)
        streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
        events = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "deadline_exceeded"
        await wait_idle(hf_engine)


async def test_image_fetches_count_against_the_deadline(make_client) -> None:  # noqa: F811
    release = asyncio.Event()
    handlers: list[asyncio.Task[Any]] = []

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        await reader.read(65536)
        await release.wait()  # the image server accepts the request and then says nothing
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(never_answers, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = make_client(request_timeout_s=0.5, allow_http=True, image_fetch_allowlist=[LOOPBACK],
                             image_fetch_read_timeout_s=30.0, image_fetch_total_timeout_s=30.0)
        content = [{"type": "text", "text": "what is this?"},
                   {"type": "image_url", "image_url": {"url": f"http://{LOOPBACK}:{port}/cat.png"}}]
        response = await client.post("/v1/chat/completions",
                                     json={**CHAT, "messages": [{"role": "user", "content": content}]})
        assert response.status_code == 504  # the request's deadline, not the fetch's own 30 s
        assert response.json()["error"]["code"] == "deadline_exceeded"
    finally:
        release.set()
        await asyncio.gather(*handlers, return_exceptions=True)
        server.close()
        await server.wait_closed()
