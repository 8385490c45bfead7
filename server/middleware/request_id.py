"""Accept the client's ``x-request-id`` (when it is a sane token) or make one; echo it on every response.

The client's id is for logs and headers only. Engines get an id the server made (``engine_request_id``):
vLLM aborts requests by id, so an id a client chose, reused or guessed could abort another client's request.
When the client sends no id, the one made here serves both, so log lines and engine ids still match.
"""

from __future__ import annotations

import re
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.middleware._respond import scope_state

HEADER = b"x-request-id"
ENGINE_ID_KEY = "engine_request_id"
_VALID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")  # no spaces or control bytes: ids go into logs and headers


def new_id() -> str:
    return uuid.uuid4().hex


def request_id_of(request: Request) -> str:
    """The id this request's answer carries in ``x-request-id`` (the client's, or the one made here).

    Set by the middleware below for every HTTP request before any handler runs, so a handler never makes its own.
    """
    given: str = request.state.request_id
    return given


def engine_request_id(request: Request) -> str:
    """The id to give engines for this request: always server-made, unique per request (set with the one above)."""
    made: str = getattr(request.state, ENGINE_ID_KEY)
    return made


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == HEADER), None)
        engine_id = new_id()
        request_id = given if given is not None and _VALID.match(given) else engine_id.encode()
        scope["headers"] = [(n, v) for n, v in scope["headers"] if n != HEADER] + [(HEADER, request_id)]
        state = scope_state(scope)
        state["request_id"] = request_id.decode()
        state[ENGINE_ID_KEY] = engine_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(n, v) for n, v in message.get("headers", []) if n.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)
