"""A routed stream read to its end, for the answers that are not streamed (chat, captions, batch lines)."""

from __future__ import annotations

from typing import Any

from server.routing.dispatch import Routed
from server.types import GenerationChunk, TokenLogprob, Usage


class Collected:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: list[dict[str, Any]] = []
        self.finish_reason: str | None = None
        self.usage = Usage()
        self.model: str | None = None

    def add(self, chunk: GenerationChunk) -> None:
        self.text.append(chunk.text)
        for delta in chunk.tool_calls:
            call = self.tool_calls.setdefault(delta.index, {"id": delta.id, "name": delta.name, "arguments": ""})
            call["id"] = call["id"] or delta.id
            call["name"] = call["name"] or delta.name
            call["arguments"] += delta.arguments
        self.logprobs.extend(logprob_entry(item) for item in chunk.logprobs)
        self.finish_reason = chunk.finish_reason or self.finish_reason
        self.usage = chunk.usage or self.usage
        self.model = chunk.model or self.model


async def collect(routed: Routed) -> Collected:
    """Read a routed stream to its end; the stream is closed even if the caller is cancelled."""
    collected = Collected()
    collected.add(routed.first)
    try:
        async for chunk in routed.rest:
            collected.add(chunk)
    finally:
        await routed.rest.aclose()  # type: ignore[attr-defined]  # client gone mid-answer: abort the engine
    return collected


def logprob_entry(item: TokenLogprob) -> dict[str, Any]:
    """One token's log-probability in OpenAI's shape (``bytes`` from the token's text when the engine gave none)."""
    return {
        "token": item.token,
        "logprob": item.logprob,
        "bytes": item.bytes if item.bytes is not None else list(item.token.encode()),
        "top_logprobs": [
            {"token": top.token, "logprob": top.logprob,
             "bytes": top.bytes if top.bytes is not None else list(top.token.encode())}
            for top in item.top_logprobs
        ],
    }
