"""Accept the client's ``x-request-id`` (when it is a sane token) or make one; echo it on every response.

The id is written back into the request headers, so handlers that read ``x-request-id`` (chat, captions)
use the same id the logs and the response carry.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.middleware._respond import scope_state

HEADER = b"x-request-id"
_VALID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")  # no spaces or control bytes: ids go into logs and headers


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == HEADER), None)
        request_id = given if given is not None and _VALID.match(given) else uuid.uuid4().hex.encode()
        scope["headers"] = [(n, v) for n, v in scope["headers"] if n != HEADER] + [(HEADER, request_id)]
        scope_state(scope)["request_id"] = request_id.decode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(n, v) for n, v in message.get("headers", []) if n.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)
