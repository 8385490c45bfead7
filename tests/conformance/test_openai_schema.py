"""Every response shape the server produces, validated against OpenAI's published schema (openai/schemas.json).

The only tolerated differences are documented extensions: our x-msserve-* headers, and extra keys where OpenAI's
schema allows them (it sets no ``additionalProperties: false`` on these objects).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from tests.conformance.conftest import API_KEY, MODEL
from tests.conformance.schema import SCHEMAS, assert_valid, errors, resolve_nullable
from tests.conftest import LiveServer
from tests.fakes.fake_azure import ContentFiltered, FakeAzure, RateLimited, Reply, ServerError
from tests.images import data_url, image_bytes, png_url

COMPLETION = "CreateChatCompletionResponse"
CHUNK = "CreateChatCompletionStreamResponse"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def user(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def complete(http: httpx.Client, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = http.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-msserve-tier"] in ("local", "azure")
    payload: dict[str, Any] = response.json()
    assert_valid(COMPLETION, payload)
    return payload


def stream(http: httpx.Client, body: dict[str, Any], **headers: str) -> list[dict[str, Any]]:
    """Every chunk of a streamed answer, each validated on its own; the stream must end with [DONE]."""
    chunks: list[dict[str, Any]] = []
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, headers=headers) as response:
        assert response.status_code == 200, response.read()
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    for payload in data[:-1]:
        chunk = json.loads(payload)
        assert_valid(CHUNK, chunk)
        chunks.append(chunk)
    return chunks


# -- the schema helper itself --------------------------------------------------------------------------------------


def test_nullable_is_resolved_before_validating() -> None:
    schema = {
        "type": "object",
        "properties": {
            "nullable": {"type": "string", "nullable": True},
            "reason": {"type": "string", "enum": ["stop"], "nullable": True},
        },
    }
    resolved = resolve_nullable(schema)
    assert resolved["properties"]["reason"] == {"anyOf": [{"type": "string", "enum": ["stop"]}, {"type": "null"}]}
    assert resolved["properties"]["nullable"]["anyOf"][1] == {"type": "null"}  # a property may be called that
    # OpenAI's own first chunk (finish_reason null) passes only once nullable is resolved.
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    }
    assert errors(CHUNK, chunk) == []
    raw = json.loads(SCHEMAS.read_text())
    unresolved = Draft202012Validator({**raw, "$ref": "#/components/schemas/" + CHUNK})
    assert not unresolved.is_valid(chunk)  # the vendored document does need the rewrite


def test_the_schema_catches_what_the_issue_found() -> None:
    """Without refusal beside content, or with a null system_fingerprint, a completion is not OpenAI's shape."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": "a", "refusal": None},
        "finish_reason": "stop",
        "logprobs": {"content": []},
    }
    found = errors(
        COMPLETION,
        {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "system_fingerprint": None,
            "choices": [choice],
        },
    )
    assert any("logprobs" in line for line in found) and any("system_fingerprint" in line for line in found)


# -- chat, each feature -------------------------------------------------------------------------------------------


def test_text_chat(http: httpx.Client) -> None:
    payload = complete(http, user("Say hello.", temperature=0))
    assert payload["model"] == MODEL and payload["choices"][0]["message"]["content"]


def test_image_chat(http: httpx.Client) -> None:
    complete(
        http,
        user(
            [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": png_url((64, 48))}}]
        ),
    )


def test_multi_turn_chat(http: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "And now?"},
    ]
    complete(http, {"model": MODEL, "messages": messages, "max_tokens": 3})


def test_tools_offered_to_the_local_model(http: httpx.Client) -> None:
    complete(http, user("Weather in Paris?", tools=TOOLS, tool_choice="auto"))


def test_tool_call_answer_and_its_stream(http: httpx.Client, azure: FakeAzure) -> None:
    call = {"id": "call_abc123xyz", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    azure.script.append(Reply(text="", tool_call=call))
    payload = complete(http, user("Weather in Paris?", tools=TOOLS), **{"x-msserve-route": "azure"})
    assert payload["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert payload["choices"][0]["finish_reason"] == "tool_calls"
    azure.script.append(Reply(text="", tool_call=call))
    chunks = stream(http, user("Weather in Paris?", tools=TOOLS), **{"x-msserve-route": "azure"})
    assert any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)


def test_logprobs_carry_refusal_and_the_top_alternatives(http: httpx.Client) -> None:
    payload = complete(http, user("Count.", temperature=0, max_tokens=4, logprobs=True, top_logprobs=2))
    logprobs = payload["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None and len(logprobs["content"]) == 4
    for entry in logprobs["content"]:
        top = entry["top_logprobs"]
        assert len(top) == 2 and top[0]["logprob"] >= top[1]["logprob"]
        # Greedy decoding picks the most likely token: it heads the alternatives, with the same logprob.
        assert (top[0]["token"], top[0]["logprob"]) == (entry["token"], entry["logprob"])
        assert top[0]["bytes"] == list(top[0]["token"].encode())


def test_streamed_logprobs_carry_refusal_and_the_top_alternatives(http: httpx.Client) -> None:
    chunks = stream(http, user("Count.", temperature=0, max_tokens=3, logprobs=True, top_logprobs=3))
    entries = [c["choices"][0]["logprobs"] for c in chunks if c["choices"] and c["choices"][0]["logprobs"]]
    assert len(entries) == 3
    for logprobs in entries:
        assert logprobs["refusal"] is None
        assert all(len(item["top_logprobs"]) == 3 for item in logprobs["content"])


def test_azure_logprobs_and_fingerprint_pass_through_unchanged(http: httpx.Client, azure: FakeAzure) -> None:
    azure.script.append(Reply(text="one two", logprob=-0.25))
    payload = complete(http, user("x", logprobs=True, top_logprobs=2), **{"x-msserve-route": "azure"})
    assert azure.requests[-1].body["top_logprobs"] == 2
    entry = payload["choices"][0]["logprobs"]["content"][0]
    assert [(t["token"], t["logprob"]) for t in entry["top_logprobs"]] == [("one", -0.25), ("one~0", -1.25)]
    assert payload["system_fingerprint"] == "fp_fake"  # Azure's own
    azure.script.append(Reply(text="one two"))
    chunks = stream(http, user("x"), **{"x-msserve-route": "azure"})
    assert {c["system_fingerprint"] for c in chunks} == {"fp_fake"}


def test_every_chunk_of_a_stream_with_usage(http: httpx.Client) -> None:
    chunks = stream(http, user("Tell me more.", max_tokens=5, stream_options={"include_usage": True}))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert len({c["id"] for c in chunks}) == 1


def test_system_fingerprint_is_stable_and_names_the_local_configuration(http: httpx.Client) -> None:
    first = complete(http, user("a"))["system_fingerprint"]
    chunks = stream(http, user("b"))
    assert first.startswith("fp_") and len(first) == 13
    assert {c["system_fingerprint"] for c in chunks} == {first}


# -- the model list -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/models", "/openai/v1/models", "/openai/models"])
def test_model_list_includes_the_aliases(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 200
    body = response.json()
    assert_valid("ListModelsResponse", body)
    routes = {card["id"]: card.get("route") for card in body["data"]}
    assert routes == {
        MODEL: None,
        "gpt-4o": "auto",
        "gpt-4o-mini": "local",
        "my-azure-deployment": "azure",
        "careful": "cascade",
    }


# -- every error code ---------------------------------------------------------------------------------------------

BAD_REQUESTS: list[tuple[Any, int, str]] = [
    (b"{not json", 400, "invalid_json"),
    ({"model": MODEL}, 400, "missing_required_parameter"),
    ({"model": MODEL, "messages": "hello"}, 400, "invalid_type"),
    ({"model": MODEL, "messages": []}, 400, "invalid_value"),
    (user("x", frobnicate=True), 400, "unknown_parameter"),
    (user("x", continue_final_message=True), 400, "unsupported_parameter"),
    (user("x", n=2), 400, "unsupported_n"),
    (user("x", model="gpt-9"), 404, "model_not_found"),
    (user([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]), 400, "unsupported_content_type"),
    (user([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}]), 400, "image_invalid_data_url"),
    (
        user([{"type": "image_url", "image_url": {"url": data_url(b"not an image", "image/png")}}]),
        415,
        "image_unsupported_format",
    ),
    (user([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]), 400, "image_url_forbidden"),
    (user("x", max_tokens=10_000_000), 400, "context_length_exceeded"),
    (user("x", response_format={"type": "json_object"}), 400, "response_format_unsupported"),
    (user("x", tools=TOOLS, tool_choice="required"), 400, "tool_choice_unsupported"),
    (user([{"type": "image_url", "image_url": {"url": png_url((8, 8))}}] * 9), 400, "too_many_images"),
    (
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": png_url((8, 8))}}]},
            ],
        },
        400,
        "invalid_image_placement",
    ),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_REQUESTS, ids=[case[2] for case in BAD_REQUESTS])
def test_error_bodies(http: httpx.Client, body: Any, status: int, code: str) -> None:
    if isinstance(body, bytes):
        response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    else:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    assert_valid("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == code


def test_error_bodies_outside_the_chat_handler(server: LiveServer, http: httpx.Client) -> None:
    cases = [
        (httpx.post(f"{server.v1}/chat/completions", json=user("x"), timeout=30), 401, "invalid_api_key"),
        (
            http.post("/v1/chat/completions", json=user("x"), headers={"x-msserve-route": "sideways"}),
            400,
            "invalid_route",
        ),
        (http.get("/v1/no-such-thing"), 404, None),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert_valid("ErrorResponse", response.json())
        if code is not None:
            assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [(ContentFiltered(), 400, "content_filter"), (ServerError(500), 502, None), (RateLimited(None, None), 429, None)],
    ids=["content_filter", "azure_5xx", "azure_429"],
)
def test_azure_error_bodies(
    http: httpx.Client, azure: FakeAzure, behaviour: Any, status: int, code: str | None
) -> None:
    azure.script += [behaviour] * 3  # retries included
    response = http.post("/v1/chat/completions", json=user("x"), headers={"x-msserve-route": "azure"})
    assert response.status_code == status, response.text
    assert_valid("ErrorResponse", response.json())
    assert code is None or response.json()["error"]["code"] == code


def test_error_event_mid_stream(http: httpx.Client, azure: FakeAzure) -> None:
    """After the 200 went out an error can only travel as a last event: it has OpenAI's error shape."""
    azure.script.append(Reply(text="one two three", error_after_chunks=1))
    with http.stream(
        "POST", "/v1/chat/completions", json={**user("x"), "stream": True}, headers={"x-msserve-route": "azure"}
    ) as response:
        assert response.status_code == 200
        data = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert_valid(CHUNK, data[0])
    assert_valid("ErrorResponse", data[-1])


def test_captions_error_bodies(http: httpx.Client) -> None:
    png = image_bytes("PNG", (32, 32))
    cases = [
        http.post("/v1/captions", data={"style": "short"}),  # no image at all
        http.post("/v1/captions", files=[("file", ("a.png", png, "image/png"))], data={"style": "sonnet"}),
        http.post("/v1/captions", files=[("file", ("a.png", b"not an image", "image/png"))]),
        http.post("/v1/captions", json={"image_urls": ["data:image/png;base64,@@@@"]}),
        http.post("/v1/captions", json={"image_urls": [png_url((8, 8))], "model": "gpt-9"}),
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, response.text
        assert_valid("ErrorResponse", response.json())
        assert response.json()["error"]["code"]


def test_key_in_azure_header_is_accepted(server: LiveServer) -> None:
    response = httpx.post(f"{server.v1}/chat/completions", json=user("x"), headers={"api-key": API_KEY}, timeout=60)
    assert response.status_code == 200, response.text
    assert_valid(COMPLETION, response.json())
