"""The one place that formats Server-Sent Events, OpenAI style: ``data: <json>\\n\\n`` ... ``data: [DONE]\\n\\n``."""

from __future__ import annotations

from pydantic import BaseModel

from server.errors import MSServeError

DONE = b"data: [DONE]\n\n"


def event(payload: BaseModel) -> bytes:
    return b"data: " + payload.model_dump_json(exclude_none=False).encode() + b"\n\n"


def error_event(error: MSServeError) -> bytes:
    """After the 200 status went out, an error can only travel as a last event."""
    import json

    return b"data: " + json.dumps(error.to_body()).encode() + b"\n\n"
