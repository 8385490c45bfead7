"""Turn offline inputs (JSONL lines, bare prompts) into the GenerationRequest the router scores at run time.

Images are counted, never decoded: each ``image_url`` part becomes an ImagePart holding a 1x1 placeholder, which
is all the router looks at (how many images, not what they show).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from server.errors import InvalidRequestError
from server.types import ContentPart, GenerationRequest, ImagePart, Message, SamplingParams, TextPart

_PLACEHOLDER = Image.new("RGB", (1, 1))
_ROLES = ("system", "user", "assistant", "tool")


def request_from_prompt(prompt: str, request_id: str = "offline") -> GenerationRequest:
    return GenerationRequest(request_id=request_id, messages=[Message(role="user", content=[TextPart(text=prompt)])])


def _parts(content: Any) -> list[ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(text=content)]
    if not isinstance(content, list):
        raise InvalidRequestError("message content must be a string or a list of parts", code="invalid_content")
    parts: list[ContentPart] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append(TextPart(text=str(part.get("text", ""))))
        elif kind in ("image_url", "input_image", "image"):
            parts.append(ImagePart(image=_PLACEHOLDER, source="offline"))
        else:
            raise InvalidRequestError(f"unsupported content part type: {kind!r}", code="invalid_content")
    return parts


def request_from_json(item: Any, request_id: str = "offline") -> GenerationRequest:
    """``{"prompt": str}`` or an OpenAI chat body (``messages``, and optional tools, response_format, max_tokens)."""
    if not isinstance(item, dict):
        raise InvalidRequestError("each line must be a JSON object", code="invalid_line")
    if "prompt" in item and "messages" not in item:
        return request_from_prompt(str(item["prompt"]), request_id)
    raw = item.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError("need a non-empty 'messages' list or a 'prompt'", code="invalid_line")
    messages = []
    for message in raw:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            raise InvalidRequestError(f"unsupported message role: {role!r}", code="invalid_line")
        messages.append(Message(role=role, content=_parts(message.get("content"))))
    max_tokens = item.get("max_completion_tokens", item.get("max_tokens"))
    return GenerationRequest(
        request_id=request_id,
        messages=messages,
        sampling=SamplingParams(max_tokens=int(max_tokens) if max_tokens else None),
        tools=item.get("tools"),
        response_format=item.get("response_format"),
    )
