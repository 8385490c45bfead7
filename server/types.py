"""The request vocabulary every layer shares: messages and their parts, sampling, the request, chunks, usage.

The API builds a ``GenerationRequest`` (messages normalized, images decoded and size-capped by ``server.media``);
the router scores it; an engine turns it into ``GenerationChunk``s. It lives here, at no layer's end, so that media,
routing, telemetry and the API depend on the words, not on the engines (``server.engines.base`` keeps only the
``Engine`` protocol).
"""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class TextPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel):
    """A decoded RGB image, already scaled to what the model will see."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    type: Literal["image"] = "image"
    image: Image.Image
    # The source's type, as sniffed from its bytes: engines that forward images (Azure) re-encode the pixels
    # above, as JPEG for photo sources, and only when they forward them.
    mime_type: str = "image/png"
    source: str = ""  # "data-url", "https", "upload": for logs, never the content


ContentPart = TextPart | ImagePart


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    name: str
    arguments: str  # JSON text, exactly as OpenAI carries it


class Message(BaseModel):
    role: Role
    content: list[ContentPart] = Field(default_factory=list)
    name: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def images(self) -> list[Image.Image]:
        return [part.image for part in self.content if isinstance(part, ImagePart)]


class EngineExtras(BaseModel):
    """Sampling and scheduling options beyond OpenAI's, as vLLM's server defines them (``top_k``, ``min_p``, ...).

    Each field at its default means "not asked for"; the defaults are vLLM's own. Engines act on those they can
    and refuse the rest (server.engines.extras.refuse_unsupported).
    """

    top_k: int = 0  # 0: no top-k cut (vLLM also takes -1 and null for that; the API layer maps them to 0)
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    stop_token_ids: list[int] = Field(default_factory=list)
    bad_words: list[str] = Field(default_factory=list)
    allowed_token_ids: list[int] | None = None
    priority: int = 0  # vLLM's priority scheduling: lower runs earlier
    cache_salt: str | None = None  # isolates a tenant's prefix-cache entries (engines without one: no effect)

    def asked(self) -> dict[str, Any]:
        """The fields set to something other than their default, by name."""
        defaults = EngineExtras()
        return {name: value for name, value in self if value != getattr(defaults, name)}


class SamplingParams(BaseModel):
    max_tokens: int | None = None  # None: up to the context window
    temperature: float = 0.15  # Mistral's recommendation for Small 3.1
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token, most likely first (with logprobs)
    extra: EngineExtras = Field(default_factory=EngineExtras)  # vLLM's extension fields (see EngineExtras)


class GenerationRequest(BaseModel):
    request_id: str
    messages: list[Message]
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    deadline: float | None = None  # time.monotonic() value after which the request is abandoned
    # False: the caller needs only the whole answer, so an engine may produce it in one piece (Azure then asks
    # for a non-streamed completion: one JSON body instead of an event per token).
    stream: bool = True
    # Scheduling priority, lower first (vLLM's convention): live requests 0, batch lines higher. Honoured by vLLM
    # under its priority scheduler, and by the transformers engine's wait queue.
    priority: int = 0

    @property
    def image_count(self) -> int:
        return sum(len(m.images) for m in self.messages)


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None  # None: the token's UTF-8 bytes


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None  # None: the token's UTF-8 bytes
    top_logprobs: list[TopLogprob] = Field(default_factory=list)  # the most likely tokens at this position


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class GenerationChunk(BaseModel):
    text: str = ""
    tool_calls: list[ToolCallDelta] = Field(default_factory=list)
    logprobs: list[TokenLogprob] = Field(default_factory=list)
    finish_reason: FinishReason | None = None
    usage: Usage | None = None  # set on the last chunk
    model: str | None = None  # the model that really answered, when the engine knows better than its name
    system_fingerprint: str | None = None  # the backend's own, when it reports one (Azure)
