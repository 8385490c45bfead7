"""Unbounded inputs: each cap is a 400 with a stable code and param, never a 5xx, and honest requests still pass."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.api import input_limits as caps
from tests.ops.conftest import CHAT, make_client, paced_engine  # noqa: F401  (fixtures)

USER = [{"role": "user", "content": "hi"}]


def _tool(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


CASES: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("stop count", {"stop": ["x"] * (caps.MAX_STOP_SEQUENCES + 1)}, "too_many_stop_sequences", "stop"),
    ("stop length", {"stop": ["ok", "y" * (caps.MAX_STOP_CHARS + 1)]}, "stop_sequence_too_long", "stop[1]"),
    ("stop string length", {"stop": "y" * (caps.MAX_STOP_CHARS + 1)}, "stop_sequence_too_long", "stop"),
    ("messages", {"messages": USER * (caps.MAX_MESSAGES + 1)}, "too_many_messages", "messages"),
    ("content parts", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 2500}] * 2},
     "too_many_content_parts", "messages[1].content"),
    ("tools", {"tools": [_tool({"type": "object"})] * (caps.MAX_TOOLS + 1)}, "too_many_tools", "tools"),
    ("schema bytes", {"tools": [_tool({"type": "object", "description": "d" * caps.MAX_SCHEMA_BYTES})]},
     "schema_too_large", "tools[0].function.parameters"),
    ("schema nodes", {"tools": [_tool({"enum": list(range(caps.MAX_SCHEMA_NODES))})]},
     "schema_too_large", "tools[0].function.parameters"),
    ("schema depth", {"tools": [_tool(_nested(caps.MAX_SCHEMA_DEPTH))]}, "schema_too_deep",
     "tools[0].function.parameters"),
    ("maxItems", {"tools": [_tool({"type": "array", "maxItems": 10**9})]}, "schema_value_too_large",
     "tools[0].function.parameters"),
    ("minLength", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "string", "minLength": 5000}}}}, "schema_value_too_large",
     "response_format.json_schema"),
    ("maximum", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "integer", "maximum": 1e300}}}}, "schema_value_too_large",
     "response_format.json_schema"),
    ("pattern", {"tools": [_tool({"type": "string", "pattern": "a" * 2000})]}, "schema_value_too_large",
     "tools[0].function.parameters"),
    ("seed over int64", {"seed": 2**63}, "invalid_value", "seed"),
    ("seed under int64", {"seed": -(2**63) - 1}, "invalid_value", "seed"),
]


@pytest.mark.parametrize(("name", "fields", "code", "param"), CASES, ids=[case[0] for case in CASES])
async def test_each_cap_is_a_400_with_a_stable_code(make_client, name, fields, code, param) -> None:  # noqa: F811
    client = make_client()
    response = await client.post("/v1/chat/completions", json={**CHAT, **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)


SURROGATES = [
    ('{"messages":[{"role":"user","content":"a\\ud800b"}]}', "messages[0].content"),
    ('{"messages":[{"role":"user","content":[{"type":"text","text":"\\udfff"}]}]}', "messages[0].content[0].text"),
    ('{"messages":[{"role":"user","content":"hi"}],"stop":["\\ud83d"]}', "stop[0]"),
    ('{"messages":[{"role":"user","content":"hi"}],"user":"\\udc00"}', "user"),
    ('{"messages":[{"role":"user","content":"hi"}],"metadata":{"\\ud800":1}}', "metadata"),
]


@pytest.mark.parametrize(("body", "param"), SURROGATES)
async def test_lone_surrogates_are_a_400(make_client, body, param) -> None:  # noqa: F811
    client = make_client()
    response = await client.post("/v1/chat/completions", content=body.encode(),
                                 headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_unicode"
    assert response.json()["error"]["param"] == param


async def test_lone_surrogate_in_a_caption_prompt_is_a_400(make_client) -> None:  # noqa: F811
    client = make_client()
    body = b'{"image_urls": ["data:image/png;base64,AAAA"], "prompt": "\\ud800"}'
    response = await client.post("/v1/captions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_unicode"


async def test_a_paired_surrogate_is_an_ordinary_character(make_client) -> None:  # noqa: F811
    client = make_client()
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "smile \U0001f600"}]})  # \\ud83d\\ude00
    assert "\\ud83d\\ude00" in body
    response = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200


async def test_requests_at_the_caps_pass(make_client) -> None:  # noqa: F811
    client = make_client()
    fields = {
        "stop": ["s" * caps.MAX_STOP_CHARS] * caps.MAX_STOP_SEQUENCES,
        "seed": 2**63 - 1,
        "messages": USER * (caps.MAX_MESSAGES - 1) + [{"role": "user", "content": [{"type": "text", "text": "a"}] * 8}],
        "tools": [_tool({"type": "array", "maxItems": caps.MAX_SCHEMA_COUNT, "items": _nested(20),
                         "minimum": -(2**53)})] * 4,
    }
    response = await client.post("/v1/chat/completions", json={**CHAT, **fields})
    assert response.status_code == 200, response.text


def test_the_value_walk_is_bounded() -> None:
    with pytest.raises(caps.InvalidRequestError) as refused:
        caps.check_unicode({"metadata": [[0]] * caps.MAX_JSON_VALUES})
    assert refused.value.code == "request_too_complex"
    caps.check_unicode({"metadata": [0] * 1000})  # well under: no error


async def test_an_unreadable_number_is_invalid_json(make_client) -> None:  # noqa: F811
    client = make_client()
    body = b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"9" * 5000 + b"}"
    response = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
