"""Token counts for Azure spend: what a call may cost before it is made, and what a cut-off stream cost.

There is no Azure tokenizer here (and a request must not pay for one), so text is counted at 3 UTF-8 bytes a
token. Azure's tokenizers average about 4 to 4.5 characters a token on English, so the count errs high, which
is the side a budget should err on: a reservation is settled to Azure's own usage figures when they come.
"""

from __future__ import annotations

import json
import math

from server.types import GenerationChunk, GenerationRequest, ImagePart, Usage

BYTES_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators around every message
# gpt-4o vision, "high" detail: 85 tokens plus 170 per 512-pixel tile of the image scaled into 2048x2048 and then
# down to 768 pixels on its short side.
IMAGE_BASE_TOKENS = 85
IMAGE_TILE_TOKENS = 170


def text_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8", "surrogatepass")) / BYTES_PER_TOKEN)


def image_tokens(width: int, height: int) -> int:
    fit = min(1.0, 2048 / max(width, height, 1))
    w, h = width * fit, height * fit
    short = min(1.0, 768 / max(min(w, h), 1.0))
    tiles = math.ceil(w * short / 512) * math.ceil(h * short / 512)
    return IMAGE_BASE_TOKENS + IMAGE_TILE_TOKENS * max(1, tiles)


def prompt_tokens(request: GenerationRequest) -> int:
    """An upper-leaning estimate of the prompt tokens Azure will bill for this request."""
    total = 0
    for message in request.messages:
        total += MESSAGE_OVERHEAD_TOKENS
        for part in message.content:
            if isinstance(part, ImagePart):
                total += image_tokens(*part.image.size)
            else:
                total += text_tokens(part.text)
        for call in message.tool_calls:
            total += text_tokens(call.name) + text_tokens(call.arguments)
    for extra in (request.tools, request.response_format):
        if extra:
            total += text_tokens(json.dumps(extra))
    return total


def reserve_usage(request: GenerationRequest, default_max_tokens: int) -> Usage:
    """The most a call may cost, in tokens: the prompt plus ``max_tokens`` (``default_max_tokens`` when unset)."""
    completion = request.sampling.max_tokens if request.sampling.max_tokens is not None else default_max_tokens
    return Usage(prompt_tokens=prompt_tokens(request), completion_tokens=max(0, completion))


class StreamMeter:
    """Counts what an answer streamed, for a stream cut off before Azure's final usage chunk.

    The count is the largest of three: the content deltas (Azure sends about one token per delta, but batches
    several when its content filter buffers output), the log-probabilities (one per token, when asked for) and
    the text at ``BYTES_PER_TOKEN``.
    """

    def __init__(self) -> None:
        self.deltas = 0
        self.logprobs = 0
        self.bytes = 0

    @property
    def started(self) -> bool:
        return self.deltas > 0

    def observe(self, chunk: GenerationChunk) -> None:
        text = chunk.text + "".join((call.name or "") + call.arguments for call in chunk.tool_calls)
        if text or chunk.logprobs:
            self.deltas += 1
        self.logprobs += len(chunk.logprobs)
        self.bytes += len(text.encode("utf-8", "surrogatepass"))

    @property
    def completion_tokens(self) -> int:
        return max(self.deltas, self.logprobs, math.ceil(self.bytes / BYTES_PER_TOKEN))
