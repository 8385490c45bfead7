"""POST /v1/chat/completions: a thin router; the work is in chat_service."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse

from server.api import chat_service
from server.api.deps import Services, get_services
from server.api.feedback import learning_runtime
from server.api.protocol import ChatCompletion, ChatCompletionRequest, ErrorResponse, completion_id
from server.telemetry import observe_routed

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 429, 502, 503, 504)
}
# With "stream": true the 200 is server-sent events; the schema describes one event (OpenAPI < 3.2): its data is a
# chat.completion.chunk in JSON, an {"error": ...} object if the stream fails midway, or the final "[DONE]".
_STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A chat.completion object, or with stream: true, server-sent chat.completion.chunk events",
        "content": {"text/event-stream": {"schema": {
            "type": "object", "required": ["data"],
            "properties": {"data": {"type": "string", "description": "a chat.completion.chunk (JSON), or [DONE]"}},
        }}},
    },
}


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={**_STREAMED, **_ERRORS})
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    x_msserve_route: Annotated[str | None, Header()] = None,
) -> JSONResponse | StreamingResponse:
    request_id = request.headers.get("x-request-id") or chat_service.new_request_id()
    chat_service.check_request(body, services)
    generation = await chat_service.to_generation_request(body, services, request_id)
    routed = await services.dispatcher.dispatch(generation, x_msserve_route, stream=body.stream)
    routed = observe_routed(request, routed, generation, stream=body.stream)  # telemetry: decision, token timings
    response_id = completion_id()
    learning = learning_runtime(services)
    if learning is not None and learning.service is not None:  # stores the outcome once the answer has gone out
        routed = learning.service.observe(routed, generation, response_id, getattr(request.state, "key_name", None))
    headers = chat_service.routing_headers(routed.decision, request_id)
    if body.stream:
        headers["cache-control"] = "no-cache"
        events = chat_service.stream(routed, body, response_id)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    return JSONResponse(await chat_service.complete(routed, body, response_id), headers=headers)
