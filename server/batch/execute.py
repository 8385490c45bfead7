"""Run one batch line as the live endpoint would: the same validation, chat service, captioning and dispatcher.

The answer is ``(status_code, body, msserve)``: the body the live endpoint returns (its JSON, or its
``{"error": ...}`` with the same status and code), and the router's decision as ``{tier, score, reason}``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from server.api import chat_service
from server.api.captions_protocol import CaptionJSONRequest, CaptionOptions
from server.api.captions_service import caption_images
from server.api.deps import Services
from server.api.errors import validation_error
from server.api.fingerprint import system_fingerprint
from server.api.protocol import ChatCompletionRequest
from server.errors import InvalidRequestError, MSServeError, NotFoundError
from server.types import ImagePart

_Model = TypeVar("_Model", bound=BaseModel)


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
    body = _validate(ChatCompletionRequest, payload)
    if body.stream:
        raise InvalidRequestError("stream is not supported in a batch", param="stream", code="unsupported_stream")
    chat_service.check_request(body, services)
    generation = await chat_service.to_generation_request(body, services, request_id)
    generation = generation.model_copy(update={"priority": BATCH_PRIORITY})
    routed = await services.dispatcher.dispatch(generation, None, stream=False)
    answer = await chat_service.complete(routed, body, system_fingerprint(routed, services))
    decision = routed.decision
    return LineResult(status_code=200, body=answer,
                      msserve={"tier": decision.tier, "score": decision.score, "reason": decision.reason})


async def _caption(payload: dict[str, Any], services: Services, request_id: str) -> LineResult:
    body = _validate(CaptionJSONRequest, payload)
    options = CaptionOptions.model_validate(body.model_dump(exclude={"image_urls"}))
    if options.model and options.model not in chat_service.served_names(services):
        raise NotFoundError(f"model {options.model!r} is not served here", param="model", code="model_not_found")
    budget = services.intake.budget()
    images: list[tuple[str | None, ImagePart]] = []
    for index, url in enumerate(body.image_urls):
        try:
            images.append((None, await services.intake.from_url(url, budget)))  # the same SSRF guard as live
        except MSServeError as exc:
            exc.param = exc.param if exc.param and exc.param != "image_url" else f"image_urls[{index}]"
            raise
    result = await caption_images(images, options, services, request_id, None, priority=BATCH_PRIORITY)
    first = result.data[0]
    tier = ",".join(dict.fromkeys(c.tier for c in result.data))  # as the live x-msserve-tier header
    return LineResult(status_code=200, body=result.model_dump(),
                      msserve={"tier": tier, "score": first.score, "reason": first.reason})


def _validate(model: type[_Model], payload: dict[str, Any]) -> _Model:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(RequestValidationError(exc.errors())) from None
