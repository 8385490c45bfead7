"""Captioning: one chat request per image through the same routing and engines as /v1/chat/completions."""

from __future__ import annotations

import asyncio

from server.api.captions_protocol import Caption, CaptionOptions, CaptionResponse, CaptionUsage
from server.api.chat_service import collect
from server.api.deps import Services
from server.api.lifetime import new_deadline
from server.errors import MSServeError
from server.types import GenerationRequest, ImagePart, Message, SamplingParams, TextPart

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


async def caption_images(
    images: list[tuple[str | None, ImagePart]], options: CaptionOptions, services: Services, request_id: str,
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
