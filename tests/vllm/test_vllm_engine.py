"""The vLLM engine behind the real HTTP API: text, images, streaming, batching, disconnects."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import psutil
import pytest

from server.engines.vllm_mapping import INLINE_RENDER_MAX_CHARS
from tests.conftest import LiveServer
from tests.images import png_url
from tests.prompt_tokens import expected_prompt_tokens

MODEL = "tiny-mistral3"

pytestmark = pytest.mark.vllm


def engine_block(server: LiveServer) -> dict:  # type: ignore[type-arg]
    response = httpx.get(f"{server.base_url}/ready", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["engine"]  # type: ignore[no-any-return]


@contextmanager
def long_stream(server: LiveServer, model: str, seed: int) -> Iterator[None]:
    """A streamed request that would run far past the test; the body runs once its first tokens arrived."""
    body = {"model": model, "messages": [{"role": "user", "content": "go on forever"}],
            "max_tokens": 4000, "stream": True, "temperature": 1.0, "seed": seed}
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any('"content"' in line for line in received)
        yield  # leaving closes the connection: the client is gone


def wait_idle(server: LiveServer, within_s: float = 60.0) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + within_s
    engine = engine_block(server)
    while (engine["running"], engine["waiting"]) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
        engine = engine_block(server)
    return engine


def test_text_chat(vllm_client) -> None:
    completion = vllm_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0, seed=1
    )
    choice = completion.choices[0]
    assert choice.message.content
    # The folder's chat template and tokenizer.json render exactly what mistral_common counts (6 tokens here).
    assert completion.usage.prompt_tokens == expected_prompt_tokens("Say hello.")
    # Greedy decoding of the random tiny model runs to the cap: exactly max_tokens counted.
    assert choice.finish_reason == "length" and completion.usage.completion_tokens == 8


def test_chat_with_image_costs_image_tokens(vllm_client) -> None:
    def prompt_tokens(content: list[dict]) -> int:  # type: ignore[type-arg]
        completion = vllm_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=4, temperature=0
        )
        assert completion.choices[0].message.content is not None
        return completion.usage.prompt_tokens  # type: ignore[no-any-return]

    url = png_url((300, 200))
    text = [{"type": "text", "text": "What colour is this?"}]
    image = {"type": "image_url", "image_url": {"url": url}}
    # 300x200 px: 11 x 8 patches of 28 px after merging, plus one break token per row = 96 image tokens.
    assert prompt_tokens(text) == expected_prompt_tokens("What colour is this?")
    assert prompt_tokens([*text, image]) == expected_prompt_tokens("What colour is this?", url)


def test_streaming_deltas_add_up(vllm_client) -> None:
    stream = vllm_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count."}], max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    deltas, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            deltas.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert len([d for d in deltas if d]) >= 2  # streamed, not one final blob
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 12
    greedy = vllm_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count."}], max_tokens=12, temperature=0
    )
    assert "".join(deltas) == greedy.choices[0].message.content


def test_eight_concurrent_requests_complete(vllm_client) -> None:
    def one(index: int) -> tuple[str, int]:
        completion = vllm_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Request {index}"}], max_tokens=24,
            temperature=0.8, seed=index,
        )
        return completion.choices[0].finish_reason, completion.usage.completion_tokens

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(8)))
    # Each ran to its cap, or stopped early on its own EOS: a batched request cut short would show here.
    assert all((reason, tokens) == ("length", 24) or (reason == "stop" and 1 <= tokens < 24)
               for reason, tokens in results), results


def test_prompts_rendered_inline_and_in_vllms_pools_at_once_count_what_they_count_alone(vllm_client) -> None:
    # Short text renders on the event loop, long text and images in vLLM's renderer threads
    # (server.engines.vllm_mapping.renders_inline); sharing the tokenizer across them must not change a prompt.
    long_text = "Tell me about the tides and the moon. " * 80
    assert len(long_text) > INLINE_RENDER_MAX_CHARS
    contents: list[object] = [f"Short request {n}" for n in range(4)]
    contents += [f"{n} {long_text}" for n in range(4)]
    contents += [[{"type": "text", "text": f"Picture {n}"},
                  {"type": "image_url", "image_url": {"url": png_url((112 + 28 * n, 84))}}] for n in range(4)]

    def prompt_tokens(content: object) -> int:
        completion = vllm_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=2, temperature=0
        )
        return completion.usage.prompt_tokens  # type: ignore[no-any-return]

    alone = [prompt_tokens(content) for content in contents]
    with ThreadPoolExecutor(max_workers=len(contents)) as pool:
        together = list(pool.map(prompt_tokens, contents))
    assert together == alone
    assert max(alone[:4]) < 100 < 500 < min(alone[4:8])  # ~4.5 characters per token


def test_response_format_json_object(vllm_client) -> None:
    completion = vllm_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Reply in JSON."}], max_tokens=16, temperature=0,
        response_format={"type": "json_object"},
    )
    # Random weights never finish the object, but the grammar forces it to start as one.
    assert completion.choices[0].message.content.lstrip().startswith("{")


def test_client_disconnect_aborts_the_request(vllm_server: LiveServer, vllm_client) -> None:
    with long_stream(vllm_server, MODEL, seed=1):
        assert engine_block(vllm_server)["running"] == 1
    engine = wait_idle(vllm_server)
    assert (engine["running"], engine["waiting"]) == (0, 0)
    # The server stays healthy: a fresh request is served in full.
    completion = vllm_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "still there?"}], max_tokens=3, temperature=0
    )
    assert completion.usage.completion_tokens >= 1
    assert httpx.get(f"{vllm_server.base_url}/health", timeout=10).status_code == 200


def test_api_process_keeps_off_the_cpu_workers_cores(vllm_server: LiveServer) -> None:
    allowed = os.sched_getaffinity(0)  # what the server was started with: it inherited ours
    if len(allowed) < 2:
        pytest.skip("one usable core: vLLM reserves none, so there is nowhere else to go")
    server = psutil.Process(vllm_server.process.pid)
    workers = [p for p in server.children(recursive=True) if p.name().startswith("VLLM::Worker")]
    assert workers, [p.name() for p in server.children(recursive=True)]
    worker_cores = set().union(*(os.sched_getaffinity(w.pid) for w in workers))
    assert worker_cores < allowed  # vLLM bound its worker (VLLM_CPU_OMP_THREADS_BIND=auto)
    for thread in server.threads():
        assert not os.sched_getaffinity(thread.id) & worker_cores, thread
    assert "the API process keeps to cores" in vllm_server.log()


def test_named_tool_choice_must_name_a_given_tool(vllm_server: LiveServer) -> None:
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    response = httpx.post(
        f"{vllm_server.v1}/chat/completions", timeout=60,
        json={"model": MODEL, "messages": [{"role": "user", "content": "time?"}], "tools": [tool],
              "tool_choice": {"type": "function", "function": {"name": "launch"}}},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_tool_choice"
    assert json.loads(response.text)["error"]["param"] == "tool_choice"
