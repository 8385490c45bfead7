"""Run one batch line as the live endpoint would: the same validation, chat service, captioning and dispatcher.

The answer is ``(status_code, body, msserve)``: the body the live endpoint returns (its JSON, or its
``{"error": ...}`` with the same status and code), and the router's decision as ``{tier, score, reason}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from server.api.aliases import check_served
from server.api.captions import service as captions
from server.api.captions.protocol import CaptionJSONRequest
from server.api.chat import service as chat
from server.api.chat.protocol import ChatCompletionRequest
from server.api.deps import Services
from server.api.error_responses import validated
from server.api.fingerprint import system_fingerprint
from server.api.routing_headers import RoutingSummary
from server.errors import InvalidRequestError, MSServeError

# Behind every live request (priority 0) where the engine schedules by priority (vLLM: lower runs first).
BATCH_PRIORITY = 10


class LineResult(BaseModel):
    status_code: int
    body: dict[str, Any]
    msserve: dict[str, Any] | None = None


async def run_line(endpoint: str, body: dict[str, Any], services: Services, request_id: str) -> LineResult:
    """Raises only what is not the line's fault (cancellation, the engine going away while draining)."""
    try:
        if endpoint == "/v1/captions":
            return await _caption(body, services, request_id)
        return await _chat(body, services, request_id)
    except MSServeError as exc:
        return LineResult(status_code=exc.status_code, body=exc.to_body())


async def _chat(payload: dict[str, Any], services: Services, request_id: str) -> LineResult:
    body = validated(ChatCompletionRequest, payload)
    if body.stream:
        raise InvalidRequestError("stream is not supported in a batch", param="stream", code="unsupported_stream")
    chat.check_request(body, services)
    generation = await chat.to_generation_request(body, services, request_id)
    generation = generation.model_copy(update={"priority": BATCH_PRIORITY})
    routed = await services.dispatcher.dispatch(generation, None, stream=False)
    answer = await chat.complete(routed, body, system_fingerprint(routed, services))
    return LineResult(status_code=200, body=answer, msserve=RoutingSummary.of(routed.decision).model_dump())


async def _caption(payload: dict[str, Any], services: Services, request_id: str) -> LineResult:
    body = validated(CaptionJSONRequest, payload)
    options = body.options()
    check_served(options.model, services)  # before any image is fetched
    images = await captions.fetch_images(body.image_urls, services)
    result = await captions.caption_images(images, options, services, request_id, None, priority=BATCH_PRIORITY)
    routing = RoutingSummary.of_parts(result.data)  # as the live x-msserve-* headers say it
    return LineResult(status_code=200, body=result.model_dump(), msserve=routing.model_dump())
