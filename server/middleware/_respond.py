"""Error responses sent by middleware, which runs outside FastAPI's exception handlers: same OpenAI error shape."""

from __future__ import annotations

import json

from starlette.types import Scope, Send

from server.errors import MSServeError


async def send_error(send: Send, error: MSServeError) -> None:
    body = json.dumps(error.to_body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def scope_state(scope: Scope) -> dict[str, object]:
    """Starlette's ``request.state`` lives in ``scope["state"]``; middleware shares per-request values there."""
    state: dict[str, object] = scope.setdefault("state", {})
    return state
