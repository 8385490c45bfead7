"""The engine interface: what every backend (transformers, vLLM, Azure) implements.

Engines never see HTTP. They receive a ``GenerationRequest`` whose messages
are already normalized (images decoded and size-capped by ``server.media``)
and yield ``GenerationChunk``s. Closing the async generator early means the
client went away: the engine must abort the request and free its resources.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, runtime_checkable

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


class SamplingParams(BaseModel):
    max_tokens: int | None = None  # None: up to the context window
    temperature: float = 0.15  # Mistral's recommendation for Small 3.1
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0


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
    # when the profile sets scheduling_policy: priority, and by the transformers engine's wait queue.
    priority: int = 0

    @property
    def image_count(self) -> int:
        return sum(len(m.images) for m in self.messages)


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class TokenLogprob(BaseModel):
    token: str
    logprob: float


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


class EngineCapabilities(BaseModel):
    images: bool = True
    tools: bool = False
    response_format: bool = False
    logprobs: bool = False
    max_images_per_request: int | None = None


class EngineHealth(BaseModel):
    ready: bool
    state: Literal["starting", "ready", "draining", "stopped", "failed"]
    detail: str = ""
    running: int = 0  # requests generating now
    waiting: int = 0  # requests queued for the engine


@runtime_checkable
class Engine(Protocol):
    """One backend. ``name`` is the model name reported to clients."""

    name: str
    capabilities: EngineCapabilities

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> EngineHealth: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]: ...
