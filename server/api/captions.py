"""POST /v1/captions: caption uploaded files (multipart, field `file`, repeatable) or image URLs (JSON)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from server.api import chat_service
from server.api.captions_protocol import CaptionJSONRequest, CaptionOptions, CaptionResponse
from server.api.captions_service import caption_images
from server.api.deps import Services, get_services
from server.api.errors import validation_error
from server.api.lifetime import guard, new_deadline
from server.api.permissions import check_route_permission
from server.api.protocol import ErrorResponse
from server.errors import ImageError, InvalidRequestError, MSServeError, NotFoundError
from server.limits.usage import note_usage
from server.middleware.request_id import engine_request_id
from server.telemetry import record_of
from server.types import ImagePart, Usage

router = APIRouter()

_OPTION_FIELDS = set(CaptionOptions.model_fields)
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
    responses={status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 415, 429, 502, 503, 504)},
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def create_captions(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    x_msserve_route: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    request_id = request.headers.get("x-request-id") or chat_service.new_request_id()
    check_route_permission(request, x_msserve_route)  # before any upload is read
    deadline = new_deadline(services.settings)
    await request.body()  # read (and cached for the parsers) before the guard starts listening for a disconnect
    # Uploads are decoded and URLs fetched inside the guard: the client leaving or the deadline passing stops
    # the fetches and every caption's engine work.
    return await guard(request, deadline, _answer(request, services, request_id, x_msserve_route, deadline))


async def _answer(
    request: Request, services: Services, request_id: str, route: str | None, deadline: float
) -> JSONResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        options, images = await _from_multipart(request, services)
    elif content_type == "application/json":
        options, images = await _from_json(request, services)
    else:
        raise InvalidRequestError(
            "send multipart/form-data with `file` fields, or JSON with `image_urls`",
            code="unsupported_media_type",
            status_code=415,
        )
    if options.model and options.model not in chat_service.served_names(services):
        raise NotFoundError(f"model {options.model!r} is not served here", param="model", code="model_not_found")
    result = await caption_images(images, options, services, engine_request_id(request), route, deadline=deadline)
    usage = Usage(prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens)
    if (record := record_of(request)) is not None:  # tokens for the request log and the dashboard row
        record.usage = usage
    note_usage(request, usage)  # and toward the key's tokens per minute
    first = result.data[0]
    headers = {
        "x-request-id": request_id,
        "x-msserve-tier": ",".join(dict.fromkeys(c.tier for c in result.data)),
        "x-msserve-reason": chat_service.header_safe(first.reason),
    }
    if first.score is not None:
        headers["x-msserve-score"] = f"{first.score:.3f}"
    return JSONResponse(result.model_dump(), headers=headers)


def _options(fields: dict[str, Any]) -> CaptionOptions:
    try:
        return CaptionOptions.model_validate(fields)
    except ValidationError as exc:
        raise _as_request_error(exc) from None


def _as_request_error(exc: ValidationError) -> MSServeError:
    from fastapi.exceptions import RequestValidationError

    return validation_error(RequestValidationError(exc.errors()))


async def _from_multipart(
    request: Request, services: Services
) -> tuple[CaptionOptions, list[tuple[str | None, ImagePart]]]:
    limit = services.settings.max_images_per_request
    try:
        form = await request.form(max_files=limit + 1, max_fields=32)
    except Exception as exc:  # python-multipart / starlette parse errors carry no stable type
        raise InvalidRequestError(f"malformed multipart body: {exc}", code="invalid_multipart") from exc
    files = [item for item in form.getlist("file") if isinstance(item, UploadFile)]
    unknown = sorted(set(form.keys()) - _OPTION_FIELDS - {"file"})
    if unknown:
        raise InvalidRequestError(f"unknown field: {unknown[0]}", param=unknown[0], code="unknown_parameter")
    if not files:
        raise InvalidRequestError(
            "attach at least one image in a `file` field", param="file", code="missing_required_parameter"
        )
    if len(files) > limit:
        raise ImageError(f"too many images: at most {limit} per request", code="too_many_images")
    fields = {key: value for key, value in form.items() if key != "file" and isinstance(value, str)}
    options = _options(fields)
    budget = services.intake.budget()
    images: list[tuple[str | None, ImagePart]] = []
    for upload in files:
        if upload.size is not None and upload.size > services.settings.max_image_bytes:
            raise ImageError(
                f"{upload.filename}: image is {upload.size} bytes; the limit is "
                f"{services.settings.max_image_bytes}",
                code="image_too_large",
                status_code=413,
            )
        data = await upload.read()
        try:
            part = await services.intake.from_bytes(data, budget, source="upload", content_type=upload.content_type)
        except MSServeError as exc:
            exc.message = f"{upload.filename}: {exc.message}"
            exc.param = exc.param or "file"
            raise
        images.append((upload.filename, part))
    return options, images


async def _from_json(request: Request, services: Services) -> tuple[CaptionOptions, list[tuple[str | None, ImagePart]]]:
    try:
        payload = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError("the request body is not valid JSON", code="invalid_json") from exc
    try:
        body = CaptionJSONRequest.model_validate(payload)
    except ValidationError as exc:
        raise _as_request_error(exc) from None
    budget = services.intake.budget()
    images: list[tuple[str | None, ImagePart]] = []
    for index, url in enumerate(body.image_urls):
        try:
            images.append((None, await services.intake.from_url(url, budget)))
        except MSServeError as exc:
            exc.param = exc.param if exc.param and exc.param != "image_url" else f"image_urls[{index}]"
            raise
    return CaptionOptions.model_validate(body.model_dump(exclude={"image_urls"})), images
