"""The Mistral-native checkpoint (consolidated.safetensors, params.json, tekken.json) through vLLM.

This is the layout of the real mistral-small-3.1 profile: tokenizer_mode, config_format and load_format
all ``mistral``, prompts from mistral_common. The tiny native folder holds the same weights as the HF one,
so greedy answers must match the HF-format server token for token. Tool calls are tested here too,
since the native path is the one the real model serves them on.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.conftest import REPO, LiveServer, start_server, stop_server
from tests.images import png_url
from tests.ops.conftest import metric
from tests.prompt_tokens import expected_prompt_tokens
from tests.vllm.conftest import READY_TIMEOUT_S
from tests.vllm.test_vllm_engine import engine_block, long_stream, wait_idle

MODEL = "tiny-mistral3-native"
HF_MODEL = "tiny-mistral3"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["unit"],
            "additionalProperties": False,
        },
    },
}
IMAGE_PROMPT = [
    {"type": "text", "text": "What colour is this?"},
    {"type": "image_url", "image_url": {"url": png_url((300, 200))}},
]

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def native_server(vllm_stack: None, tiny_model: object, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    # Rebuilds the native folder when the recipe changed (the server only builds a missing folder).
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_model.py"), "--format", "mistral"], check=True)
    # This server also takes its running/waiting counts from vLLM's scheduler stats (the HF one estimates them).
    server = start_server(tmp_path_factory.mktemp("vllm-native"), {"MSSERVE_VLLM_SCHEDULER_STATS": "true"},
                          profile="tiny-mistral3-vllm-native", ready_timeout=READY_TIMEOUT_S)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def native_client(native_server: LiveServer):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    with OpenAI(base_url=native_server.v1, api_key="not-needed", max_retries=0, timeout=300) as client:
        yield client


def greedy(client, model: str, content: object, **extra: object):  # type: ignore[no-untyped-def]
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=12, temperature=0, **extra
    )


def test_text_chat(native_client) -> None:
    completion = greedy(native_client, MODEL, "Say hello.")
    assert completion.choices[0].message.content
    assert completion.usage.prompt_tokens == expected_prompt_tokens("Say hello.")  # mistral_common's own count
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 12


def test_image_answer_matches_the_hf_format_server(native_client, vllm_client) -> None:
    native = greedy(native_client, MODEL, IMAGE_PROMPT)
    hf = greedy(vllm_client, HF_MODEL, IMAGE_PROMPT)
    # 300x200 px: 11 x 8 merged patches plus a break token per row, in both layouts.
    assert native.usage.prompt_tokens == hf.usage.prompt_tokens == expected_prompt_tokens(
        IMAGE_PROMPT[0]["text"], IMAGE_PROMPT[1]["image_url"]["url"])  # type: ignore[index]
    assert native.choices[0].message.content == hf.choices[0].message.content
    assert native.usage.completion_tokens == hf.usage.completion_tokens


def test_tools_enter_the_prompt(native_client, vllm_client) -> None:
    for client, model in ((native_client, MODEL), (vllm_client, HF_MODEL)):
        plain = greedy(client, model, "Weather in Paris?")
        with_tools = greedy(client, model, "Weather in Paris?", tools=[WEATHER])
        assert with_tools.choices[0].finish_reason in ("stop", "length", "tool_calls")
        assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the tool's JSON is in the template


def test_named_tool_choice_forces_a_call(native_client) -> None:
    completion = native_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], max_tokens=64, temperature=0,
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["unit"] in ("celsius", "fahrenheit")
    assert len(call.id) == 9 and call.id.isalnum()
    assert not choice.message.content


def test_required_tool_choice_streams_a_call_and_the_id_round_trips(native_client) -> None:
    stream = native_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], max_tokens=64, temperature=0,
        tools=[WEATHER], tool_choice="required", stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            call["name"] = (delta.function.name if delta.function else None) or call["name"]
            call["arguments"] += (delta.function.arguments if delta.function else None) or ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    # "required" allows parallel calls: random weights may keep adding calls until max_tokens ends the list.
    assert finish in ("tool_calls", "length")
    assert calls and all(call["name"] == "get_weather" and len(call["id"]) == 9 for call in calls.values())
    assert all(json.loads(call["arguments"])["unit"] in ("celsius", "fahrenheit") for call in calls.values())
    first = calls[min(calls)]
    # The call and its result go back as history: mistral_common accepts the 9-character id.
    call = {"id": first["id"], "type": "function", "function": {"name": "get_weather", "arguments": first["arguments"]}}
    follow_up = native_client.chat.completions.create(
        model=MODEL, max_tokens=4, temperature=0, tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": first["id"], "content": '{"temperature": 21}'},
        ],
    )
    assert follow_up.usage.completion_tokens >= 1


def test_scheduler_stats_count_a_running_request(native_server: LiveServer) -> None:
    with long_stream(native_server, MODEL, seed=2):
        assert engine_block(native_server)["running"] == 1  # the scheduler has stepped: its stats say so
    assert wait_idle(native_server)["running"] == 0


def test_kv_cache_gauges_come_from_the_scheduler_stats(native_server: LiveServer) -> None:
    kv_names = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    with long_stream(native_server, MODEL, seed=5):
        text = httpx.get(f"{native_server.base_url}/metrics", timeout=10).text
        busy = [metric(text, name, model_name=MODEL) for name in kv_names]
        assert metric(text, "vllm:num_requests_running", model_name=MODEL) == 1
    # A request holding KV blocks: vLLM's own figure, above zero and at most the whole cache, under both names.
    assert busy[0] is not None and 0 < busy[0] <= 1 and busy[1] == busy[0]
    assert wait_idle(native_server)["kv_cache_usage"] is not None


# Last in this module: it stops the module's server.
def test_sigterm_shuts_the_engine_down_cleanly(native_server: LiveServer) -> None:
    stop_server(native_server)  # SIGTERM, as systemd or Docker sends it
    assert native_server.process.returncode == 0
    log = native_server.log()
    assert "Application shutdown complete" in log
    # vLLM's AsyncLLM.__del__ used to shut down a second time at interpreter exit and print a TypeError traceback.
    assert "Traceback" not in log and "Exception ignored" not in log, log[-3000:]
