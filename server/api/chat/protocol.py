"""OpenAI chat-completions wire schema (pydantic): the request and the non-streamed answer. No engine code, no torch.

Fields OpenAI defines that this server does not act on are listed in IGNORED_FIELDS and
accepted silently (clients and routers send them by default); any other unknown field is a
400 ``unknown_parameter`` so typos do not pass unnoticed. vLLM's own extension fields (``top_k``,
``continue_final_message``, ...) are declared, honoured or refused in ``server.api.vllm_extensions``.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.api.input_limits import INT64_MAX, INT64_MIN, check_chat_payload
from server.api.vllm_extensions import VLLMExtensionFields

IGNORED_FIELDS = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "parallel_tool_calls",
        "modalities",
        "prediction",
        "safety_identifier",
        "prompt_cache_key",
        "reasoning_effort",
        "verbosity",
        "web_search_options",
        "audio",
        "function_call",
        "functions",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class TextContentPart(_Strict):
    type: Literal["text"]
    text: str


class ImageContentPart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextContentPart | ImageContentPart, Field(discriminator="type")]


class FunctionCallBody(_Strict):
    name: str
    arguments: str


class ToolCallBody(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallBody


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallBody] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _content_rules(self) -> ChatMessage:
        if self.role in ("system", "developer", "user") and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class StreamOptions(_Strict):
    include_usage: bool = False


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(VLLMExtensionFields):  # vLLM's extension fields: server/api/vllm_extensions.py
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)  # engines take a 64-bit seed
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="before")
    @classmethod
    def _input_caps(cls, data: Any) -> Any:
        check_chat_payload(data)  # counts, sizes, schemas, lone surrogates: before pydantic walks the payload
        return data

    def unknown_fields(self) -> list[str]:
        return sorted(set(self.model_extra or {}) - IGNORED_FIELDS)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


# -- responses ---------------------------------------------------------------------------------


class FunctionCallOut(BaseModel):
    name: str | None = None
    arguments: str = ""


class ToolCallOut(BaseModel):
    index: int | None = None
    id: str | None = None
    type: Literal["function"] | None = "function"
    function: FunctionCallOut


class TopLogprobEntry(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class LogprobEntry(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprobEntry] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[LogprobEntry] | None = None
    refusal: list[LogprobEntry] | None = None  # OpenAI requires the key; the model never refuses in a channel


class AssistantMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    refusal: str | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessageOut
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: UsageOut | None = None
    system_fingerprint: str  # server/api/fingerprint.py
