"""The vLLM engine against OpenAI's schema: top_logprobs, refusal, system_fingerprint, vLLM's extension fields."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conformance.schema import assert_valid
from tests.conftest import LiveServer

MODEL = "tiny-mistral3"

pytestmark = pytest.mark.vllm


def ask(server: LiveServer, **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 4, **fields}
    return httpx.post(f"{server.v1}/chat/completions", json=body, timeout=300)


def answer(server: LiveServer, **fields: Any) -> dict[str, Any]:
    response = ask(server, **fields)
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    assert_valid("CreateChatCompletionResponse", payload)
    return payload


def test_top_logprobs_list_the_most_likely_alternatives(vllm_server: LiveServer) -> None:
    payload = answer(vllm_server, temperature=0, logprobs=True, top_logprobs=2)
    logprobs = payload["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None and len(logprobs["content"]) == 4
    for entry in logprobs["content"]:
        top = entry["top_logprobs"]
        assert len(top) == 2 and top[0]["logprob"] >= top[1]["logprob"]
        assert top[0]["token"] == entry["token"]  # greedy: the sampled token is the most likely one
    assert payload["system_fingerprint"].startswith("fp_")


def test_streamed_chunks_validate(vllm_server: LiveServer) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
            "logprobs": True, "top_logprobs": 1, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{vllm_server.v1}/chat/completions", json=body, timeout=300) as response:
        assert response.status_code == 200
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    for payload in data[:-1]:
        assert_valid("CreateChatCompletionStreamResponse", json.loads(payload))


def test_top_k_1_samples_the_greedy_answer(vllm_server: LiveServer) -> None:
    greedy = answer(vllm_server, temperature=0, max_tokens=8)["choices"][0]["message"]["content"]
    hot = {answer(vllm_server, temperature=1.8, seed=s, max_tokens=8, top_k=1)["choices"][0]["message"]["content"]
           for s in (1, 2, 3)}
    assert hot == {greedy}


def test_sampling_extensions_are_honoured(vllm_server: LiveServer) -> None:
    # ignore_eos + min_tokens: the answer runs to max_tokens exactly.
    payload = answer(vllm_server, temperature=0, max_tokens=6, min_tokens=6, ignore_eos=True)
    assert payload["usage"]["completion_tokens"] == 6 and payload["choices"][0]["finish_reason"] == "length"
    # The rest are passed to vLLM's SamplingParams as they are: accepted, answered, in OpenAI's shape.
    greedy = answer(vllm_server, temperature=0, max_tokens=4, logprobs=True)["choices"][0]["logprobs"]["content"]
    first = greedy[0]["token"]
    answer(vllm_server, temperature=0, max_tokens=2, repetition_penalty=1.3, min_p=0.05, priority=-1,
           cache_salt="tenant-a", skip_special_tokens=False, stop_token_ids=[2], bad_words=[first or "x"],
           include_stop_str_in_output=True, spaces_between_special_tokens=False)


def test_default_only_fields_are_refused_by_name(vllm_server: LiveServer) -> None:
    response = ask(vllm_server, continue_final_message=True)
    assert response.status_code == 400
    assert_valid("ErrorResponse", response.json())
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (
        "unsupported_parameter", "continue_final_message")
    assert ask(vllm_server, continue_final_message=False, add_generation_prompt=True).status_code == 200
