"""Bound request bodies in size (413 ``request_too_large``) and in arrival time (408 ``request_body_timeout``).

Size: a declared Content-Length over the limit is refused before a byte is read. Otherwise the bytes are counted
as the app reads them; on the first byte too many the 413 goes out at once and the app sees the client
disconnect, so nothing past the limit is ever buffered (chunked uploads included).

Time: while a body arrives it must keep up an average of ``min_bytes_per_s`` after a grace period, i.e. by any
moment ``t`` after the first read, ``(t - grace_s) * min_bytes_per_s`` bytes must be in. A client trickling a
byte at a time is cut off with 408 and its connection closed, while a large honest upload (megabytes per second
on any real link) is never near the line. The rule is an average, so a stall is fine once paid for by speed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import InvalidRequestError
from server.middleware._respond import send_error


def too_large(limit: int) -> InvalidRequestError:
    return InvalidRequestError(f"the request body is larger than {limit} bytes", code="request_too_large",
                               status_code=413)


def too_slow(received: int, elapsed: float, min_rate: float) -> InvalidRequestError:
    return InvalidRequestError(
        f"the request body arrived too slowly ({received} bytes in {elapsed:.1f}s; at least {min_rate:g} bytes/s "
        "are needed after a short grace period)",
        code="request_body_timeout", status_code=408, headers={"connection": "close"},
    )


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, min_bytes_per_s: float = 0.0, grace_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.min_bytes_per_s = min_bytes_per_s  # 0: no rate floor
        self.grace_s = grace_s
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "POST" and scope.get("path") == "/v1/files":
            await self.app(scope, receive, send)  # batch uploads stream to disk under their own caps
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await send_error(send, too_large(self.max_bytes))
            return
        received = 0
        first_read: float | None = None
        body_done = False
        started = False
        refused = False

        async def refuse(error: InvalidRequestError) -> Message:
            nonlocal refused
            refused = True
            if not started:
                await send_error(send, error)
            return {"type": "http.disconnect"}

        async def timed_receive() -> Message:
            """The next message, within what the rate floor still allows (no limit once the body is in)."""
            nonlocal first_read
            if body_done or self.min_bytes_per_s <= 0:
                return await receive()
            now = self.clock()
            first_read = now if first_read is None else first_read
            allowed = first_read + self.grace_s + received / self.min_bytes_per_s - now
            try:
                if allowed <= 0:
                    raise TimeoutError
                async with asyncio.timeout(allowed):
                    return await receive()
            except TimeoutError:
                return await refuse(too_slow(received, self.clock() - first_read, self.min_bytes_per_s))

        async def counted_receive() -> Message:
            nonlocal received, body_done
            if refused:
                return {"type": "http.disconnect"}
            message = await timed_receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    return await refuse(too_large(self.max_bytes))
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # our 413/408 went out; whatever the app says after it goes nowhere
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
