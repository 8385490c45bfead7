"""POST /v1/feedback: a client says how good an answer was; the router learns from it.

Body ``{"id": "<the response's id>", "score": 0..1}`` (1: good). Only the API key that made the request may score
it (another key gets the same 404 as an unknown id: ids do not leak across keys). 204 on success.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from server.api.deps import Services, get_services
from server.api.error_responses import ErrorResponse
from server.errors import NotFoundError
from server.routing.runtime import LearningRuntime

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (400, 401, 404)}


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    score: float = Field(ge=0.0, le=1.0)


def learning_runtime(services: Services) -> LearningRuntime | None:
    return services.learning


@router.post("/v1/feedback", status_code=204, response_class=Response, responses=_ERRORS)
async def feedback(body: Feedback, request: Request, services: Annotated[Services, Depends(get_services)]) -> Response:
    runtime = learning_runtime(services)
    key_name = getattr(request.state, "key_name", None)
    if runtime is not None and runtime.service is not None:
        await runtime.service.stored(body.id)  # the answer may have gone out a moment before its row is written
    found = runtime is not None and await asyncio.to_thread(runtime.store.feedback, body.id, key_name, body.score)
    if not found:
        raise NotFoundError(f"no response with id {body.id!r} for this API key", param="id", code="response_not_found")
    return Response(status_code=204)
