"""Caps on what one request may ask for, checked on the raw JSON before pydantic builds anything from it.

The body size limit bounds bytes, not work: 32 MB of JSON is a million tiny messages for pydantic to build on
the event loop, a stop list the stop matcher scans on every token, or a schema whose ``maxItems: 10**9`` a
grammar compiler unrolls. Each cap is a 400 with its own stable code and the offending ``param``.

The checks run as a ``mode="before"`` validator on the request models (``server.api.chat.protocol``,
``server.api.captions.protocol``) so that they see the payload before pydantic walks it. They raise
``InvalidRequestError``, which pydantic lets through unchanged (it only wraps ValueError/AssertionError), so the
client gets exactly this code and param rather than a generic validation error.
"""

from __future__ import annotations

import json
from typing import Any

from server.errors import InvalidRequestError

MAX_MESSAGES = 2048
MAX_CONTENT_PARTS = 4096  # text and image parts, all messages together
MAX_STOP_SEQUENCES = 16  # OpenAI takes 4; vLLM clients send a few more
MAX_STOP_CHARS = 512
MAX_TOOLS = 128  # OpenAI's own limit
MAX_SCHEMA_BYTES = 64 * 1024  # one tool's parameters or one response_format.json_schema, as compact JSON
MAX_SCHEMA_DEPTH = 64  # JSON nesting inside one schema (objects and arrays)
MAX_SCHEMA_NODES = 20_000  # JSON values inside one schema: bounds the walk before the byte count is taken
# Repetition bounds that grammar compilers (xgrammar, outlines) unroll into states: at most this many.
MAX_SCHEMA_COUNT = 4096
COUNT_KEYWORDS = frozenset({"minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties",
                            "minContains", "maxContains"})
# Numeric ranges compile to digit-by-digit automata: keep bounds within what a double holds exactly.
MAX_SCHEMA_NUMBER = 2**53
NUMBER_KEYWORDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})
MAX_SCHEMA_PATTERN_CHARS = 1024  # "pattern" regexes also become automata
MAX_JSON_VALUES = 200_000  # every value in the whole request: bounds the surrogate walk itself
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def refuse(message: str, code: str, param: str | None) -> InvalidRequestError:
    return InvalidRequestError(message, code=code, param=param)


def check_chat_payload(data: Any) -> None:
    """All caps of a chat-completions body (a dict fresh from JSON); anything of the wrong type is left to pydantic."""
    if not isinstance(data, dict):
        return
    _check_messages(data.get("messages"))
    _check_stop(data.get("stop"))
    _check_tools(data.get("tools"))
    response_format = data.get("response_format")
    if isinstance(response_format, dict) and response_format.get("json_schema") is not None:
        check_schema(response_format["json_schema"], "response_format.json_schema")
    check_unicode(data)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        return
    if len(messages) > MAX_MESSAGES:
        raise refuse(f"{len(messages)} messages; at most {MAX_MESSAGES} per request", "too_many_messages", "messages")
    parts = 0
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts += len(content)
            if parts > MAX_CONTENT_PARTS:
                raise refuse(f"more than {MAX_CONTENT_PARTS} content parts in one request", "too_many_content_parts",
                             f"messages[{index}].content")


def _check_stop(stop: Any) -> None:
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list):
        return
    if len(stops) > MAX_STOP_SEQUENCES:
        raise refuse(f"{len(stops)} stop sequences; at most {MAX_STOP_SEQUENCES}", "too_many_stop_sequences", "stop")
    for index, item in enumerate(stops):
        if isinstance(item, str) and len(item) > MAX_STOP_CHARS:
            param = "stop" if isinstance(stop, str) else f"stop[{index}]"
            raise refuse(f"a stop sequence is {len(item)} characters; at most {MAX_STOP_CHARS}",
                         "stop_sequence_too_long", param)


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        return
    if len(tools) > MAX_TOOLS:
        raise refuse(f"{len(tools)} tools; at most {MAX_TOOLS}", "too_many_tools", "tools")
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("parameters") is not None:
            check_schema(function["parameters"], f"tools[{index}].function.parameters")


def check_schema(schema: Any, param: str) -> None:
    """Size, depth and the numbers grammar compilers expand, of one JSON schema (iterative: depth is hostile)."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise refuse(f"the schema has more than {MAX_SCHEMA_NODES} values", "schema_too_large", param)
        if isinstance(value, dict | list) and depth > MAX_SCHEMA_DEPTH:
            raise refuse(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels", "schema_too_deep", param)
        if isinstance(value, dict):
            for key, item in value.items():
                _check_keyword(key, item, param)
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
    try:
        size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError, UnicodeEncodeError):
        return  # not JSON-shaped or not encodable: the unicode check or pydantic says so
    if size > MAX_SCHEMA_BYTES:
        raise refuse(f"the schema is {size} bytes; at most {MAX_SCHEMA_BYTES}", "schema_too_large", param)


def _check_keyword(key: Any, value: Any, param: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        if key == "pattern" and isinstance(value, str) and len(value) > MAX_SCHEMA_PATTERN_CHARS:
            raise refuse(f"a schema pattern is {len(value)} characters; at most {MAX_SCHEMA_PATTERN_CHARS}",
                         "schema_value_too_large", param)
        return
    if key in COUNT_KEYWORDS and value > MAX_SCHEMA_COUNT:
        raise refuse(f"schema {key} is {value}; at most {MAX_SCHEMA_COUNT}", "schema_value_too_large", param)
    if key in NUMBER_KEYWORDS and not -MAX_SCHEMA_NUMBER <= value <= MAX_SCHEMA_NUMBER:
        raise refuse(f"schema {key} must be within ±2^53", "schema_value_too_large", param)


def check_unicode(data: Any) -> None:
    """Refuse lone surrogates ("\\ud800" in JSON), which no UTF-8 encoder downstream can take.

    JSON allows the escape; Python decodes it into a str that fails wherever it is encoded later (tokenizer,
    log line, response), which would be a 500 far from the cause. The walk is bounded by MAX_JSON_VALUES.
    """
    # (value, trail): the trail is (parent trail, key), so a path string is built only for the one bad value.
    stack: list[tuple[Any, Any]] = [(data, None)]
    seen = 0
    while stack:
        value, trail = stack.pop()
        seen += 1
        if seen > MAX_JSON_VALUES:
            raise refuse(f"the request has more than {MAX_JSON_VALUES} JSON values", "request_too_complex", None)
        if isinstance(value, str):
            if not value.isascii() and not _encodable(value):
                path = _path(trail)
                raise refuse(f"{path or 'the body'}: a string holds a lone UTF-16 surrogate (e.g. \\ud800), "
                             "which is not valid Unicode", "invalid_unicode", path or None)
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and not key.isascii() and not _encodable(key):
                    path = _path(trail)
                    raise refuse(f"{path or 'the body'}: an object key holds a lone UTF-16 surrogate",
                                 "invalid_unicode", path or None)
                stack.append((item, (trail, key)))
        elif isinstance(value, list):
            stack.extend((item, (trail, index)) for index, item in enumerate(value))


def _path(trail: Any) -> str:
    keys: list[Any] = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    out = ""
    for key in reversed(keys):
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
