"""The one place that formats Server-Sent Events, OpenAI style: ``data: <json>\\n\\n`` ... ``data: [DONE]\\n\\n``."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any

from server.errors import MSServeError

DONE = b"data: [DONE]\n\n"
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # built once: json.dumps(..., separators=...) builds one per call
_MARK = "\x00msserve-text\x00"  # stands for the text while a stream's text-event template is built


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + _COMPACT.encode(payload).encode() + b"\n\n"


def error_event(error: MSServeError) -> bytes:
    """After the 200 status went out, an error can only travel as a last event."""
    return b"data: " + json.dumps(error.to_body()).encode() + b"\n\n"


class ChunkEvents:
    """The ``chat.completion.chunk`` events of one stream.

    Nearly every event carries only a piece of text, and all of it but the text is the same for the whole stream;
    ``text`` writes such an event from a template made once (again if the model changes), which costs a fraction
    of encoding the whole chunk and gives the same bytes as ``chunk``.
    """

    def __init__(self, base: dict[str, Any], *, include_usage: bool) -> None:
        self.base = base  # id, object, created, model, system_fingerprint; the caller may change the model
        self.include_usage = include_usage
        self._template: tuple[str, bytes, bytes] | None = None  # (model, head, tail)

    def chunk(self, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        payload = {**self.base, "choices": [choice]}
        if self.include_usage:
            payload["usage"] = None
        return event(payload)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The last chunk when the client asked for usage: no choices, the token counts."""
        counts = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}
        return event({**self.base, "choices": [], "usage": counts})

    def text(self, text: str) -> bytes:
        template = self._template
        if template is None or template[0] != self.base["model"]:
            template = self._template = self._make_template()
        _, head, tail = template
        if not head:  # no template for this model name (see _make_template)
            return self.chunk({"content": text})
        return head + encode_basestring_ascii(text).encode() + tail

    def _make_template(self) -> tuple[str, bytes, bytes]:
        whole = self.chunk({"content": _MARK})
        mark = encode_basestring_ascii(_MARK).encode()
        if whole.count(mark) != 1:  # a model name holding the mark itself (a backend's answer): no shortcut
            return self.base["model"], b"", b""
        head, _, tail = whole.partition(mark)
        return self.base["model"], head, tail
