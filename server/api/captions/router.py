"""POST /v1/captions: caption uploaded files (multipart, field `file`, repeatable) or image URLs (JSON).

A thin router: the body is read into options and images by service.py, which also runs the captions.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse

from server.api.aliases import check_served
from server.api.captions import service
from server.api.captions.protocol import CaptionResponse
from server.api.deps import Services, get_services
from server.api.error_responses import documented
from server.api.lifetime import guard, new_deadline
from server.api.permissions import check_route_permission
from server.api.routing_headers import RoutingSummary
from server.limits.usage import note_usage
from server.middleware.request_id import engine_request_id, request_id_of
from server.telemetry import record_of
from server.types import Usage

router = APIRouter()

_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "prompt": {"type": "string"},
                    "style": {"type": "string", "enum": ["short", "detailed", "alt_text"]},
                    "language": {"type": "string"},
                    "max_tokens": {"type": "integer", "minimum": 1},
                    "model": {"type": "string"},
                },
            }
        },
        "application/json": {"schema": {"$ref": "#/components/schemas/CaptionJSONRequest"}},
    },
}


@router.post(
    "/v1/captions",
    response_model=CaptionResponse,
    responses=documented(400, 401, 403, 404, 413, 415, 429, 502, 503, 504),
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def create_captions(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    x_msserve_route: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    check_route_permission(request, x_msserve_route)  # before any upload is read
    deadline = new_deadline(services.settings)
    await request.body()  # read (and cached for the parsers) before the guard starts listening for a disconnect
    # Uploads are decoded and URLs fetched inside the guard: the client leaving or the deadline passing stops
    # the fetches and every caption's engine work.
    return await guard(request, deadline, _answer(request, services, x_msserve_route, deadline))


async def _answer(request: Request, services: Services, route: str | None, deadline: float) -> JSONResponse:
    options, images = await service.read_request(request, services)
    check_served(options.model, services)
    result = await service.caption_images(
        images, options, services, engine_request_id(request), route, deadline=deadline
    )
    usage = Usage(prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens)
    if (record := record_of(request)) is not None:  # tokens for the request log and the dashboard row
        record.usage = usage
    note_usage(request, usage)  # and toward the key's tokens per minute
    headers = RoutingSummary.of_parts(result.data).headers(request_id_of(request))
    return JSONResponse(result.model_dump(), headers=headers)
