"""Wire schema of POST /v1/captions (JSON form; the multipart form carries the same fields)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.api.input_limits import check_unicode

CaptionStyle = Literal["short", "detailed", "alt_text"]


class CaptionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | None = Field(default=None, max_length=4000, description="replaces the built-in instruction")
    style: CaptionStyle = "short"
    language: str | None = Field(default=None, max_length=40, description="e.g. 'French' or 'fr'")
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0, le=2)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        check_unicode(data)  # a lone surrogate in prompt or language is a 400, not a tokenizer crash
        return data


class CaptionJSONRequest(CaptionOptions):
    image_urls: list[str] = Field(min_length=1, description="data: URLs, or https:// URLs when remote fetch is on")

    def options(self) -> CaptionOptions:
        return CaptionOptions.model_validate(self.model_dump(exclude={"image_urls"}))


class CaptionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Caption(BaseModel):
    index: int
    filename: str | None
    caption: str
    model: str
    tier: str
    score: float | None
    reason: str
    finish_reason: str
    usage: CaptionUsage


class CaptionResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Caption]
    usage: CaptionUsage
