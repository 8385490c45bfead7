"""The benchmark's ceiling contenders: vLLM's renderer and engine in-process (scripts/bench_engine_direct.py), and
the thinnest OpenAI server on them (scripts/bench_engine_thin.py).

They must see the very prompts the served engine sees, or their requests/s would not bound anything; the thin
server must also speak the stream our server speaks, or the client's work would differ.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.images import png_url
from tests.scripts import load_script

pytestmark = pytest.mark.vllm

MODEL = "tiny-mistral3"


@pytest.fixture(scope="module")
def direct(vllm_stack: None, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    engine = load_script("bench_engine_direct").DirectEngine.for_profile(
        Path(sys.executable), "tiny-mistral3-vllm", tmp_path_factory.mktemp("direct") / "direct.log",
        {"VLLM_CPU_KVCACHE_SPACE": "1"},
    ).start()
    load_script("bench_common").wait_ready([engine], 900.0, say=lambda _: None)
    yield engine
    engine.stop()
    assert engine.process.returncode == 0, engine.log_path.read_text()[-2000:]


def test_direct_engine_counts_the_served_prompt_tokens_and_decodes_the_same_text(direct, vllm_server: LiveServer):
    content = [{"type": "text", "text": "Describe this picture."},
               {"type": "image_url", "image_url": {"url": png_url((252, 196))}}]
    bodies = [
        ("text", {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about tides."}], "max_tokens": 12,
                  "temperature": 0}),
        ("image", {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 12,
                   "temperature": 0}),
    ]
    results, _ = direct.run(bodies, concurrency=2)
    assert all(r.ok for r in results), [r.error for r in results]
    by_kind = {r.kind: r for r in results}
    for kind, body in bodies:
        served = httpx.post(f"{vllm_server.v1}/chat/completions", json=body, timeout=300).json()["usage"]
        assert by_kind[kind].prompt_tokens == served["prompt_tokens"], kind
        assert by_kind[kind].output_tokens == served["completion_tokens"], kind
        assert by_kind[kind].ttft_s is not None and 0 < by_kind[kind].ttft_s <= by_kind[kind].e2e_s
    assert by_kind["image"].prompt_tokens > by_kind["text"].prompt_tokens + 40  # the image's tokens are in


def test_a_failing_request_is_reported_not_fatal(direct) -> None:
    broken = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]  # "not an image"
    bad = ("image", {"model": MODEL, "messages": [{"role": "user", "content": broken}], "max_tokens": 2})
    good = ("text", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    results, _ = direct.run([bad, good], concurrency=1)
    assert sorted((r.kind, r.ok) for r in results) == [("image", False), ("text", True)]
    assert next(r.error for r in results if not r.ok)


@pytest.fixture(scope="module")
def thin(vllm_stack: None, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    service = load_script("bench_serving").thin_service(Path(sys.executable), "tiny-mistral3-vllm",
                                                         tmp_path_factory.mktemp("thin")).start()
    try:
        load_script("bench_common").wait_ready([service], 900.0, say=lambda _: None)
        yield service
    finally:
        service.stop()


def streamed(base_url: str, content: object) -> tuple[list[str], object]:
    """(text deltas, usage) of one greedy streamed chat, read by the openai SDK."""
    from openai import OpenAI

    with OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=300) as client:
        chunks = list(client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert chunks[-1].usage is not None and not chunks[-1].choices
    return deltas, chunks[-1].usage


@pytest.mark.parametrize("kind", ["text", "image"])
def test_thin_server_streams_what_our_server_streams(thin, vllm_server: LiveServer, kind: str) -> None:
    content: object = "Tell me about tides."
    if kind == "image":
        content = [{"type": "text", "text": "Describe this picture."},
                   {"type": "image_url", "image_url": {"url": png_url((252, 196))}}]
    thin_deltas, thin_usage = streamed(thin.base_url + "/v1", content)
    our_deltas, our_usage = streamed(vllm_server.v1, content)
    assert "".join(thin_deltas) == "".join(our_deltas) and len(thin_deltas) > 1
    assert (thin_usage.prompt_tokens, thin_usage.completion_tokens) == (
        our_usage.prompt_tokens, our_usage.completion_tokens)
