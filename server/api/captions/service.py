"""Captioning: the request's images read (uploads or URLs), then one chat request per image through the same
routing and engines as /v1/chat/completions."""

from __future__ import annotations

import asyncio
import json

from fastapi import Request
from starlette.datastructures import UploadFile

from server.api.captions.protocol import Caption, CaptionJSONRequest, CaptionOptions, CaptionResponse, CaptionUsage
from server.api.collected import collect
from server.api.deps import Services
from server.api.error_responses import validated
from server.api.lifetime import new_deadline
from server.errors import ImageError, InvalidRequestError, MSServeError
from server.types import GenerationRequest, ImagePart, Message, SamplingParams, TextPart

Images = list[tuple[str | None, ImagePart]]  # (the upload's filename, or None for a URL; the image)
_OPTION_FIELDS = set(CaptionOptions.model_fields)

INSTRUCTIONS = {
    "short": "Write one short sentence that captions this image. Reply with the caption only.",
    "detailed": (
        "Describe this image in detail: the main subject, the setting, notable objects, colours, any text that is "
        "visible, and the overall mood. Reply with the description only."
    ),
    "alt_text": (
        "Write alt text for this image for people using a screen reader: say what matters in the image in at most "
        "125 characters, without starting with 'image of'. Reply with the alt text only."
    ),
}
DEFAULT_MAX_TOKENS = {"short": 60, "detailed": 400, "alt_text": 80}


def instruction(options: CaptionOptions) -> str:
    text = options.prompt or INSTRUCTIONS[options.style]
    if options.language:
        text += f" Answer in {options.language}."
    return text


async def read_request(request: Request, services: Services) -> tuple[CaptionOptions, Images]:
    """The options and images of a live request: a multipart form of uploads, or JSON naming image URLs."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _from_multipart(request, services)
    if content_type == "application/json":
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequestError("the request body is not valid JSON", code="invalid_json") from exc
        return await _from_json(payload, services)
    raise InvalidRequestError(
        "send multipart/form-data with `file` fields, or JSON with `image_urls`",
        code="unsupported_media_type",
        status_code=415,
    )


async def _from_json(payload: object, services: Services) -> tuple[CaptionOptions, Images]:
    body = validated(CaptionJSONRequest, payload)
    return body.options(), await fetch_images(body.image_urls, services)


async def fetch_images(urls: list[str], services: Services) -> Images:
    """The JSON form's images (a live request's or a batch line's), fetched behind the same SSRF guard."""
    budget = services.intake.budget()
    images: Images = []
    for index, url in enumerate(urls):
        try:
            images.append((None, await services.intake.from_url(url, budget)))
        except MSServeError as exc:
            exc.param = exc.param if exc.param and exc.param != "image_url" else f"image_urls[{index}]"
            raise
    return images


async def _from_multipart(request: Request, services: Services) -> tuple[CaptionOptions, Images]:
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
    options = validated(CaptionOptions, fields)
    budget = services.intake.budget()
    images: Images = []
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


async def caption_images(
    images: Images, options: CaptionOptions, services: Services, request_id: str,
    route: str | None, *, deadline: float | None = None, priority: int = 0,
) -> CaptionResponse:
    deadline = deadline or new_deadline(services.settings)

    async def one(index: int, filename: str | None, image: ImagePart) -> Caption:
        request = GenerationRequest(
            request_id=f"{request_id}-{index}",
            messages=[Message(role="user", content=[TextPart(text=instruction(options)), image])],
            sampling=SamplingParams(
                max_tokens=options.max_tokens or DEFAULT_MAX_TOKENS[options.style],
                temperature=0.15 if options.temperature is None else options.temperature,
            ),
            deadline=deadline,
            stream=False,
            priority=priority,
        )
        routed = await services.dispatcher.dispatch(request, route, stream=False)
        result = await collect(routed)
        usage = result.usage
        return Caption(
            index=index,
            filename=filename,
            caption="".join(result.text).strip(),
            model=result.model or routed.model,
            tier=routed.decision.tier,
            score=routed.decision.score,
            reason=routed.decision.reason,
            finish_reason=result.finish_reason or "stop",
            usage=CaptionUsage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                               total_tokens=usage.total_tokens),
        )

    try:
        async with asyncio.TaskGroup() as group:  # one failure cancels the other captions: nothing half done
            tasks = [group.create_task(one(i, name, image)) for i, (name, image) in enumerate(images)]
    except* MSServeError as failures:
        raise failures.exceptions[0] from None
    captions = [task.result() for task in tasks]
    total = CaptionUsage(
        prompt_tokens=sum(c.usage.prompt_tokens for c in captions),
        completion_tokens=sum(c.usage.completion_tokens for c in captions),
        total_tokens=sum(c.usage.total_tokens for c in captions),
    )
    return CaptionResponse(model=captions[0].model, data=captions, usage=total)
