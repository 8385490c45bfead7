"""A local engine for unit tests: yields the chunks it is given, and can be made to fail or look overloaded.

It implements ``server.engines.base.Engine``; the end-to-end tests use the real transformers engine instead.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

from server.engines.base import EngineCapabilities, EngineHealth
from server.errors import MSServeError
from server.types import GenerationChunk, GenerationRequest, TokenLogprob, Usage


def answer(text: str, *, prob: float = 0.9, prompt_tokens: int = 10) -> list[GenerationChunk]:
    """Chunks for ``text``, one per word, every token with probability ``prob``, usage on the last one."""
    words = text.split(" ")
    chunks = [
        GenerationChunk(
            text=word if i == 0 else " " + word, logprobs=[TokenLogprob(token=word, logprob=math.log(prob))]
        )
        for i, word in enumerate(words)
    ]
    chunks[-1].finish_reason = "stop"
    chunks[-1].usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=len(words))
    return chunks


class ScriptedEngine:
    def __init__(
        self,
        chunks: list[GenerationChunk] | None = None,
        *,
        name: str = "local-test",
        fail_with: MSServeError | None = None,
        waiting: int = 0,
        ready: bool = True,
    ) -> None:
        self.name = name
        self.capabilities = EngineCapabilities(logprobs=True)
        self.chunks = chunks if chunks is not None else answer("local answer")
        self.fail_with = fail_with
        self.waiting = waiting
        self.ready = ready
        self.requests: list[GenerationRequest] = []
        self.closed = 0  # generators closed before their end (client went away)

    async def start(self) -> None:
        self.ready = True

    async def stop(self) -> None:
        self.ready = False

    def health(self) -> EngineHealth:
        return EngineHealth(ready=self.ready, state="ready" if self.ready else "failed", waiting=self.waiting)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request.model_copy(deep=True))
        if self.fail_with is not None:
            raise self.fail_with
        finished = False
        try:
            for chunk in self.chunks:
                out = chunk.model_copy(deep=True)
                if not request.sampling.logprobs:
                    out.logprobs = []  # like a real engine: logprobs only when asked for
                yield out
            finished = True
        finally:
            if not finished:
                self.closed += 1
