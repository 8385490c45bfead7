"""Mistral tool-call output -> OpenAI tool-call deltas, fed the way an engine streams it."""

from __future__ import annotations

import itertools
import json

import pytest

from server.engines.mistral_tools import (
    ToolCallParser,
    forced_call_schema,
    new_tool_call_id,
)
from server.errors import InvalidRequestError
from server.types import ToolCallDelta

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def run(text: str, *, pieces: int = 1, forced: bool = False) -> tuple[str, list[dict[str, str]], list[ToolCallDelta]]:
    """Feed ``text`` in pieces of ``pieces`` characters; return content, assembled calls and the raw deltas."""
    counter = itertools.count()
    parser = ToolCallParser(forced=forced, new_id=lambda: f"call{next(counter):05d}")
    content, deltas = "", []
    chunks = [text[i:i + pieces] for i in range(0, len(text), pieces)] if pieces else [text]
    for chunk in chunks:
        piece, found = parser.feed(chunk)
        content += piece
        deltas += found
    piece, found = parser.finish()
    content += piece
    deltas += found
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
        call["id"] = delta.id or call["id"]
        call["name"] = delta.name or call["name"]
        call["arguments"] += delta.arguments
    assert parser.called == bool(calls)
    return content, [calls[i] for i in sorted(calls)], deltas


@pytest.mark.parametrize("pieces", [0, 1, 3, 7])
def test_v7_json_list_with_two_calls(pieces: int) -> None:
    text = (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {}}]'
    )
    content, calls, deltas = run(text, pieces=pieces)
    assert content == ""
    assert calls == [
        {"id": "call00000", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "call00001", "name": "get_time", "arguments": "{}"},
    ]
    # Each call opens with its id and name exactly once, as OpenAI streams do.
    assert [d.index for d in deltas if d.name] == [0, 1]


@pytest.mark.parametrize("pieces", [0, 1, 4])
def test_v11_name_args_calls_stream_their_arguments(pieces: int) -> None:
    text = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}'
    content, calls, deltas = run(text, pieces=pieces)
    assert content == ""
    assert calls == [
        {"id": "call00000", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "call00001", "name": "get_time", "arguments": "{}"},
    ]
    if pieces == 1:
        assert len([d for d in deltas if d.index == 0 and d.arguments]) > 1  # arguments arrive in pieces


def test_v11_call_id_from_the_model_is_kept_when_valid() -> None:
    _, calls, _ = run('[TOOL_CALLS]get_time[CALL_ID]a1B2c3D4e[ARGS]{}')
    assert calls == [{"id": "a1B2c3D4e", "name": "get_time", "arguments": "{}"}]


def test_content_before_a_call_is_kept_and_the_marker_never_leaks() -> None:
    text = 'Let me check.[TOOL_CALLS][{"name": "get_time", "arguments": {}}]'
    for pieces in (1, 2, 5):
        content, calls, _ = run(text, pieces=pieces)
        assert content == "Let me check."
        assert [call["name"] for call in calls] == ["get_time"]


def test_plain_answer_passes_through_including_bracket_text() -> None:
    text = "Use [TOOL] or [TOOL_CALL] in prose; arrays like [1, 2] stay text."
    content, calls, _ = run(text, pieces=1)
    assert content == text
    assert calls == []


def test_a_broken_call_comes_back_as_content() -> None:
    content, calls, _ = run("[TOOL_CALLS][{'name': get_weather", pieces=3)
    assert calls == []
    assert content == "[{'name': get_weather"


def test_forced_mode_reads_the_bare_list_without_a_marker() -> None:
    content, calls, _ = run('[{"name": "get_weather", "arguments": {"city": "Oslo"}}]', pieces=2, forced=True)
    assert content == ""
    assert calls == [{"id": "call00000", "name": "get_weather", "arguments": '{"city": "Oslo"}'}]


def test_arguments_keep_non_ascii_text() -> None:
    _, calls, _ = run('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Zürich"}}]')
    assert json.loads(calls[0]["arguments"]) == {"city": "Zürich"}
    assert "Zürich" in calls[0]["arguments"]


def test_tool_call_ids_are_nine_alphanumerics() -> None:
    made = {new_tool_call_id() for _ in range(50)}
    assert len(made) == 50
    assert all(len(value) == 9 and value.isascii() and value.isalnum() for value in made)


def test_forced_call_schema_for_required_and_named_choices() -> None:
    assert forced_call_schema([WEATHER, TIME], "auto") is None
    assert forced_call_schema([WEATHER, TIME], None) is None
    required = forced_call_schema([WEATHER, TIME], "required")
    assert required is not None and required["minItems"] == 1 and "maxItems" not in required
    names = [item["properties"]["name"]["enum"] for item in required["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]
    named = forced_call_schema([WEATHER, TIME], {"type": "function", "function": {"name": "get_weather"}})
    assert named is not None and named["maxItems"] == 1
    (only,) = named["items"]["anyOf"]
    assert only["properties"]["arguments"] == WEATHER["function"]["parameters"]


def test_named_choice_must_be_one_of_the_tools() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        forced_call_schema([WEATHER], {"type": "function", "function": {"name": "launch"}})
    assert caught.value.code == "invalid_tool_choice"
    assert caught.value.param == "tool_choice"
