"""The tokens a request used, handed from the endpoint that knows them to the key-limits middleware.

The middleware puts a ``UsageMeter`` in the request's scope state when the key has a tokens-per-minute limit;
the endpoints note the usage of their answer in it (a stream: its last usage figure, once it is over). Without
a meter (no limit, or a batch line run outside HTTP) every call here does nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from server.types import GenerationChunk, Usage

if TYPE_CHECKING:  # the middleware imports this module: it needs none of the routing code
    from server.routing.dispatch import Routed

METER_KEY = "key_limits_meter"  # scope["state"] key


@dataclass
class UsageMeter:
    usage: Usage | None = None

    @property
    def tokens(self) -> int:
        return 0 if self.usage is None else self.usage.prompt_tokens + self.usage.completion_tokens


def meter_of(request: Request) -> UsageMeter | None:
    meter = (request.scope.get("state") or {}).get(METER_KEY)
    return meter if isinstance(meter, UsageMeter) else None


def note_usage(request: Request, usage: Usage) -> None:
    if (meter := meter_of(request)) is not None:
        meter.usage = usage


def meter_routed(request: Request, routed: Routed) -> Routed:
    """``routed`` with its stream's usage noted in the request's meter as it passes; unchanged without a meter."""
    meter = meter_of(request)
    if meter is None:
        return routed
    if routed.first.usage is not None:
        meter.usage = routed.first.usage
    return routed.model_copy(update={"rest": _MeteredStream(routed.rest, meter)})


class _MeteredStream:
    def __init__(self, inner: AsyncIterator[GenerationChunk], meter: UsageMeter) -> None:
        self._inner = inner
        self._meter = meter

    def __aiter__(self) -> _MeteredStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        chunk = await anext(self._inner)
        if chunk.usage is not None:
            self._meter.usage = chunk.usage
        return chunk

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()
