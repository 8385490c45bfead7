"""The tokens a request used, handed from the endpoint that knows them to the key-limits middleware.

The middleware puts a ``UsageMeter`` in the request's scope state when the key has a tokens-per-minute limit;
the endpoints note the usage of their answer in it (a stream: its last usage figure, once it is over). A stream
cut off before its usage figure (engines send it last) counts what it streamed and its prompt, estimated as the
spend ledger estimates them (server.routing.metering), so leaving early does not make an answer free. Without a
meter (no limit, or a batch line run outside HTTP) every call here does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

from server.routing.metering import StreamMeter, prompt_tokens
from server.routing.streams import Tracked
from server.types import GenerationChunk, GenerationRequest, Usage

if TYPE_CHECKING:  # the middleware imports this module: it needs none of the routing code
    from server.routing.dispatch import Routed

METER_KEY = "key_limits_meter"  # scope["state"] key


@dataclass
class UsageMeter:
    usage: Usage | None = None  # the answer's own figures, once known
    streamed: StreamMeter = field(default_factory=StreamMeter)
    request: GenerationRequest | None = None

    @property
    def tokens(self) -> int:
        if self.usage is not None:
            return self.usage.prompt_tokens + self.usage.completion_tokens
        if not self.streamed.started:
            return 0  # no answer: nothing was generated
        prompt = prompt_tokens(self.request) if self.request is not None else 0
        return prompt + self.streamed.completion_tokens

    def observe(self, chunk: GenerationChunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
        self.streamed.observe(chunk)


def meter_of(request: Request) -> UsageMeter | None:
    meter = (request.scope.get("state") or {}).get(METER_KEY)
    return meter if isinstance(meter, UsageMeter) else None


def note_usage(request: Request, usage: Usage) -> None:
    if (meter := meter_of(request)) is not None:
        meter.usage = usage


def meter_routed(request: Request, routed: Routed, generation: GenerationRequest) -> Routed:
    """``routed`` with its stream's usage noted in the request's meter as it passes; unchanged without a meter."""
    meter = meter_of(request)
    if meter is None:
        return routed
    meter.request = generation
    meter.observe(routed.first)
    return routed.model_copy(update={"rest": Tracked(routed.rest, None, _ignore, on_chunk=meter.observe)})


def _ignore(usage: Usage | None, error: BaseException | None) -> None:
    """The meter has what it needs from each chunk; the end of the stream adds nothing."""
