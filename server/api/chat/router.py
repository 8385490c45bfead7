"""POST /v1/chat/completions, and Azure's own paths to it: a thin router; the work is in service.py.

Azure OpenAI clients (``AzureOpenAI(azure_endpoint=...)``) call ``/openai/deployments/{deployment}/chat/completions
?api-version=...`` with the deployment as the model, or ``/openai/v1/chat/completions``; both are the same
endpoint here, behind the same middleware (auth accepts Azure's ``api-key`` header, limits, metrics, logs).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from server.api.aliases import resolve_route
from server.api.chat import service
from server.api.chat.protocol import ChatCompletion, ChatCompletionRequest, completion_id
from server.api.deps import Services, get_services
from server.api.error_responses import documented
from server.api.fingerprint import system_fingerprint
from server.api.lifetime import guard, new_deadline
from server.api.permissions import check_route_permission
from server.api.routing_headers import RoutingSummary
from server.limits.usage import meter_routed
from server.middleware.request_id import engine_request_id, request_id_of
from server.telemetry import observe_routed

router = APIRouter()

_ERRORS = documented(400, 401, 403, 404, 413, 415, 429, 502, 503, 504)
# With "stream": true the 200 is server-sent events; the schema describes one event (OpenAPI < 3.2): its data is a
# chat.completion.chunk in JSON, an {"error": ...} object if the stream fails midway, or the final "[DONE]".
_STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A chat.completion object, or with stream: true, server-sent chat.completion.chunk events",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {"type": "string", "description": "a chat.completion.chunk (JSON), or [DONE]"}
                    },
                }
            }
        },
    },
}
_RESPONSES = {**_STREAMED, **_ERRORS}
RouteHeader = Annotated[str | None, Header()]
ServicesDep = Annotated[Services, Depends(get_services)]


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_RESPONSES)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, services: ServicesDep, x_msserve_route: RouteHeader = None
) -> JSONResponse | StreamingResponse:
    return await _chat(body, request, services, x_msserve_route)


@router.post("/openai/v1/chat/completions", response_model=ChatCompletion, responses=_RESPONSES)
async def create_chat_completion_azure_v1(
    body: ChatCompletionRequest, request: Request, services: ServicesDep, x_msserve_route: RouteHeader = None
) -> JSONResponse | StreamingResponse:
    return await _chat(body, request, services, x_msserve_route)


@router.post("/openai/deployments/{deployment}/chat/completions", response_model=ChatCompletion, responses=_RESPONSES)
async def create_chat_completion_azure_deployment(
    deployment: str,
    body: ChatCompletionRequest,
    request: Request,
    services: ServicesDep,
    x_msserve_route: RouteHeader = None,
    api_version: Annotated[str | None, Query(alias="api-version")] = None,  # any version: the wire format is one
) -> JSONResponse | StreamingResponse:
    body.model = deployment  # Azure's deployments form names the model in the path, not the body
    return await _chat(body, request, services, x_msserve_route)


async def _chat(
    body: ChatCompletionRequest, request: Request, services: Services, route_header: str | None
) -> JSONResponse | StreamingResponse:
    # The model name resolves to the route the x-msserve-route header would give (the header wins); whatever
    # checks the route (the per-key permission to force Azure) reads this value, so an alias cannot get around it.
    route = resolve_route(body.model, route_header, services)
    service.check_request(body, services)
    # The effective route's permission, before any work; an alias names its route through the model.
    check_route_permission(request, route, param="x-msserve-route" if route_header else "model")
    deadline = new_deadline(services.settings)

    async def answer() -> JSONResponse | StreamingResponse:
        generation = await service.to_generation_request(
            body, services, engine_request_id(request), deadline=deadline
        )
        routed = await services.dispatcher.dispatch(generation, route, stream=body.stream)
        routed = observe_routed(request, routed, generation, stream=body.stream)  # telemetry: decision, timings
        routed = meter_routed(request, routed, generation)  # its tokens count toward the key's tokens per minute
        response_id = completion_id()  # made before answering: the stored outcome and feedback name it
        learning = services.learning
        if learning is not None and learning.service is not None:  # stores the outcome once the answer has gone out
            routed = learning.service.observe(routed, generation, response_id, getattr(request.state, "key_name", None))
        headers = RoutingSummary.of(routed.decision).headers(request_id_of(request))
        fingerprint = system_fingerprint(routed, services)
        if body.stream:  # from here the response hears a disconnect itself; the engine keeps the deadline
            headers["cache-control"] = "no-cache"
            events = service.stream(routed, body, fingerprint, response_id)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        return JSONResponse(await service.complete(routed, body, fingerprint, response_id), headers=headers)

    # Image fetches, the wait for the engine and a non-streamed answer stop when the client leaves or time is up.
    return await guard(request, deadline, answer())
