"""server.api.sse.ChunkEvents: text events from a per-stream template are byte for byte the full chunk's JSON."""

from __future__ import annotations

import json

import pytest

from server.api.sse import ChunkEvents

TEXTS = ["Hello", " world", "", 'say "hi"', "back\\slash", "tab\there\nnewline\r", "\x00\x1f\x7f", "héllo wörld",
         "日本語のテキスト", "emoji 🚀 and 🧪", "\u2028\u2029", "</script>", "a" * 5000, "[TOOL_CALLS]", "\ud83d"]


def base(model: str = "tiny-mistral3") -> dict[str, object]:
    return {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1764160000, "model": model,
            "system_fingerprint": None}


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("text", TEXTS)
def test_a_text_event_is_the_full_chunk(text: str, include_usage: bool) -> None:
    events = ChunkEvents(base(), include_usage=include_usage)
    fast = events.text(text)
    assert fast == events.chunk({"content": text})
    assert fast.startswith(b"data: ") and fast.endswith(b"\n\n")
    decoded = json.loads(fast[len(b"data: "):])
    assert decoded["choices"][0]["delta"] == {"content": text}
    assert ("usage" in decoded) is include_usage


def test_the_template_follows_a_model_change_mid_stream() -> None:
    stream_base = base("router-model")
    events = ChunkEvents(stream_base, include_usage=True)
    assert json.loads(events.text("a")[6:])["model"] == "router-model"
    stream_base["model"] = "gpt-4o-2024-11-20"  # Azure named the model it used in its first chunk
    assert events.text("b") == events.chunk({"content": "b"})
    assert json.loads(events.text("b")[6:])["model"] == "gpt-4o-2024-11-20"


def test_a_model_name_holding_the_template_mark_falls_back_to_the_full_chunk() -> None:
    events = ChunkEvents(base("evil\x00msserve-text\x00model"), include_usage=False)
    assert events.text("x") == events.chunk({"content": "x"})
    assert json.loads(events.text("x")[6:])["choices"][0]["delta"] == {"content": "x"}
