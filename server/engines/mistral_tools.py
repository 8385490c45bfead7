"""Mistral tool calls: model output text -> OpenAI tool-call deltas, and the schema that forces a call.

Mistral models announce tool calls with the ``[TOOL_CALLS]`` special token, in one of two shapes:

- tokenizers before v11 (Mistral Small 3.1 is v7): ``[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]``
- v11 and later: ``[TOOL_CALLS]f[ARGS]{...}`` per call (``[CALL_ID]id`` may sit between name and ``[ARGS]``)

``ToolCallParser`` reads the output as it streams and splits it into plain content and
``ToolCallDelta``s. A JSON-list call is emitted whole once its object closes; a v11 call emits its
name at ``[ARGS]`` and then streams its arguments as they arrive. Each call gets a Mistral tool-call
id: 9 ASCII letters or digits, the only shape mistral_common accepts when the call comes back in
the next request's history.

``tool_choice`` "required" or a named function cannot rely on the model choosing to call: the engine
constrains decoding with ``forced_call_schema``, a JSON schema for the bare list
``[{"name": ..., "arguments": ...}]`` (what vLLM's own Mistral parser does for pre-v11 tokenizers),
and the parser starts in tool mode (``forced=True``).

Pure Python, no engine imports: every engine that decodes Mistral text can use it.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable
from typing import Any

from server.errors import InvalidRequestError
from server.types import ToolCallDelta

TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"
ID_ALPHABET = string.ascii_letters + string.digits
ID_LENGTH = 9


def new_tool_call_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def forced_tool_name(tools: list[dict[str, Any]], tool_choice: str | dict[str, Any] | None) -> str | None:
    """The function a named tool_choice asks for (None when the choice names none); checked against tools."""
    if not isinstance(tool_choice, dict):
        return None
    name = (tool_choice.get("function") or {}).get("name")
    known = [tool_name(tool) for tool in tools]
    if not isinstance(name, str) or name not in known:
        raise InvalidRequestError(
            f"tool_choice names function {name!r}, which is not among the request's tools ({', '.join(known)})",
            code="invalid_tool_choice", param="tool_choice",
        )
    return name


def forced_call_schema(tools: list[dict[str, Any]], tool_choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """JSON schema that forces a tool call for tool_choice "required" or a named function, else None."""
    named = forced_tool_name(tools, tool_choice)
    if tool_choice != "required" and named is None:
        return None
    chosen = [tool for tool in tools if named is None or tool_name(tool) == named]
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [tool_name(tool)]},
                "arguments": (tool.get("function") or {}).get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in chosen
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
    if named is not None:
        schema["maxItems"] = 1
    return schema


def tool_name(tool: dict[str, Any]) -> str:
    return str((tool.get("function") or {}).get("name", ""))


class ToolCallParser:
    """Incremental splitter of one completion's text into content and tool-call deltas.

    ``feed`` takes each new piece of text and returns (content, tool-call deltas) ready to send;
    ``finish`` flushes what was held back. Text that might be the start of a marker is held until
    the next piece decides it. Output that announces a call but never forms one comes back as content.
    """

    def __init__(self, *, forced: bool = False, new_id: Callable[[], str] = new_tool_call_id) -> None:
        self._new_id = new_id
        self._in_tools = forced
        self._pending = ""  # content that may be the start of the [TOOL_CALLS] marker
        self._tool_text = ""  # everything after the marker
        self._pos = 0  # how far _tool_text is consumed
        self._calls = 0
        self._failed = False
        self._streaming_args = False  # v11 shape: inside a call's arguments

    @property
    def called(self) -> bool:
        return self._calls > 0

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        content = ""
        if not self._in_tools:
            self._pending += text
            index = self._pending.find(TOOL_CALLS)
            if index < 0:
                cut = len(self._pending) - _marker_prefix_length(self._pending, TOOL_CALLS)
                content, self._pending = self._pending[:cut], self._pending[cut:]
                return content, []
            content, text = self._pending[:index], self._pending[index + len(TOOL_CALLS):]
            self._pending, self._in_tools = "", True
            if not content.strip():
                content = ""  # whitespace before a call is not an answer
        self._tool_text += text
        return content, self._advance(final=False)

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        if not self._in_tools:
            content, self._pending = self._pending, ""
            return content, []
        deltas = self._advance(final=True)
        if self._calls == 0:
            # The model announced a call but wrote no valid one: its text is the answer.
            return self._tool_text.strip(), deltas
        return "", deltas

    # -- the text after [TOOL_CALLS] -------------------------------------------------------------

    def _advance(self, *, final: bool) -> list[ToolCallDelta]:
        deltas: list[ToolCallDelta] = []
        while not self._failed:
            if self._streaming_args:
                delta = self._stream_arguments(final)
                if delta is not None:
                    deltas.append(delta)
                if self._streaming_args:
                    break
                continue
            rest = self._tool_text[self._pos:]
            stripped = rest.lstrip()
            if stripped.startswith(TOOL_CALLS):
                self._pos += len(rest) - len(stripped) + len(TOOL_CALLS)  # next call (parallel calls)
                continue
            if not stripped:
                break
            json_shape = stripped[0] in "[{,]"
            if not (self._json_calls(deltas, final) if json_shape else self._named_call(deltas, final)):
                break
        return deltas

    def _json_calls(self, deltas: list[ToolCallDelta], final: bool) -> bool:
        """Pre-v11 shape: a JSON list of {name, arguments} objects (or one bare object)."""
        text = self._tool_text
        start = len(text) - len(text[self._pos:].lstrip())
        if text[start] in "[,]":
            self._pos = start + 1  # list punctuation between call objects
            return True
        try:
            item, end = json.JSONDecoder().raw_decode(text, start)
        except json.JSONDecodeError:
            if final:
                self._failed = True
            return False
        call = _call_from_json(item)
        if call is None:
            self._failed = True
            return False
        name, arguments = call
        deltas.append(ToolCallDelta(index=self._calls, id=self._new_id(), name=name, arguments=arguments))
        self._calls += 1
        self._pos = end
        return True

    def _named_call(self, deltas: list[ToolCallDelta], final: bool) -> bool:
        """v11+ shape: name[ARGS]{...}; the name is complete at [ARGS]."""
        rest = self._tool_text[self._pos:]
        index = rest.find(ARGS)
        if index < 0:
            if final:
                self._failed = True
            return False
        name, _, call_id = rest[:index].strip().partition(CALL_ID)
        if not name:
            self._failed = True
            return False
        call_id = call_id.strip()
        valid_id = len(call_id) == ID_LENGTH and call_id.isascii() and call_id.isalnum()
        deltas.append(ToolCallDelta(index=self._calls, id=call_id if valid_id else self._new_id(), name=name))
        self._calls += 1
        self._pos += index + len(ARGS)
        self._streaming_args = True
        return True

    def _stream_arguments(self, final: bool) -> ToolCallDelta | None:
        rest = self._tool_text[self._pos:]
        end = rest.find(TOOL_CALLS)
        if end >= 0:
            piece, self._streaming_args = rest[:end], False
        elif final:
            piece, self._streaming_args = rest, False
        else:
            piece = rest[: len(rest) - _marker_prefix_length(rest, TOOL_CALLS)]
        self._pos += len(piece)
        if not self._streaming_args:
            piece = piece.rstrip()
        return ToolCallDelta(index=self._calls - 1, arguments=piece) if piece else None


def _call_from_json(item: Any) -> tuple[str, str] | None:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        return None
    arguments = item.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return item["name"], arguments


def _marker_prefix_length(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker`` (text to hold back)."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0
