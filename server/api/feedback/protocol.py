"""The body of POST /v1/feedback: ``{"id": "<the response's id>", "score": 0..1}`` (1: good)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    score: float = Field(ge=0.0, le=1.0)
