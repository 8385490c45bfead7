"""Refuse request bodies over ``max_request_bytes`` with 413 ``request_too_large``, counted while they arrive.

A declared Content-Length over the limit is refused before a byte is read. Otherwise the bytes are counted
as the app reads them; on the first byte too many the 413 goes out at once and the app sees the client
disconnect, so nothing past the limit is ever buffered (chunked uploads included).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import InvalidRequestError
from server.middleware._respond import send_error


def too_large(limit: int) -> InvalidRequestError:
    return InvalidRequestError(f"the request body is larger than {limit} bytes", code="request_too_large",
                               status_code=413)


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and scope["path"] == "/v1/files":
            await self.app(scope, receive, send)  # batch uploads stream to disk under their own caps
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await send_error(send, too_large(self.max_bytes))
            return
        received = 0
        started = False
        refused = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await send_error(send, too_large(self.max_bytes))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # our 413 went out; whatever the app says after it goes nowhere
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise  # the app failing on the disconnect we made it see is expected; anything else is not


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
