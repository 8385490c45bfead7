"""POST /v1/feedback: a client says how good an answer was; the router learns from it.

Body ``{"id": "<the response's id>", "score": 0..1}`` (1: good). Only the API key that made the request may score
it (another key gets the same 404 as an unknown id: ids do not leak across keys). 204 on success; 503
``feedback_store_unavailable`` when the shared outcome store (Redis) cannot be reached.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from server.api.deps import Services, get_services
from server.api.error_responses import documented
from server.api.feedback.protocol import Feedback
from server.api.feedback.service import record
from server.errors import NotFoundError

router = APIRouter()


@router.post("/v1/feedback", status_code=204, response_class=Response, responses=documented(400, 401, 404, 503))
async def feedback(body: Feedback, request: Request, services: Annotated[Services, Depends(get_services)]) -> Response:
    if not await record(body, getattr(request.state, "key_name", None), services.learning):
        raise NotFoundError(f"no response with id {body.id!r} for this API key", param="id", code="response_not_found")
    return Response(status_code=204)
