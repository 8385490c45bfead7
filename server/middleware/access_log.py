"""Time every request, fill its ``RequestRecord`` and hand it to telemetry when the last byte went out.

The record is created here (outermost but for the request id) so that requests refused by the auth, size
and concurrency middleware are counted and logged too. Streamed bodies pass straight through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.middleware._respond import scope_state
from server.telemetry import STATE_KEY, RequestRecord, Telemetry

_ERROR_PEEK_BYTES = 8192  # error bodies are small JSON; bigger ones are not parsed for their code


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope_state(scope)
        record = RequestRecord(request_id=str(state.get("request_id", "")), method=scope["method"],
                               path=scope["path"])
        state[STATE_KEY] = record
        finished_body = False
        headers: dict[bytes, bytes] = {}

        async def send_logged(message: Message) -> None:
            nonlocal finished_body
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers.update((name.lower(), value) for name, value in message.get("headers", []))
            elif message["type"] == "http.response.body":
                if record.status >= 400 and record.error_code is None:
                    record.error_code = _error_code(message.get("body", b""), headers)
                if not message.get("more_body", False):
                    finished_body = True
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        except asyncio.CancelledError:
            record.outcome = "aborted"  # e.g. the drain timeout ran out during shutdown
            raise
        except Exception:
            record.outcome = "error"
            record.status = record.status or 500
            raise
        finally:
            if record.outcome == "ok" and record.status and not finished_body:
                record.outcome = "client_closed"
            elif record.outcome == "ok" and (record.status >= 400 or record.error_code):
                record.outcome = "error"
            record.key_name = record.key_name or _str_or_none(state.get("key_name"))
            record.endpoint = _endpoint(scope)
            _fill_from_headers(record, headers)
            self.telemetry.finish(record)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _endpoint(scope: Scope) -> str:
    """The route template (``/v1/chat/completions``), also for requests refused before routing; else ``other``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    for template, pattern in _templates(scope.get("app")):
        if pattern.fullmatch(scope["path"]):
            return template
    return "other"


def _templates(app: object) -> list[tuple[str, re.Pattern[str]]]:
    """Path templates from the app's OpenAPI document (public API; FastAPI nests included routers)."""
    cached = getattr(getattr(app, "state", None), "path_templates", None)
    if cached is not None:
        return list(cached)
    openapi = getattr(app, "openapi", None)
    try:
        paths = list(openapi().get("paths", {})) if callable(openapi) else []
    except Exception:  # a broken schema must not break request logging
        paths = []
    templates = [(path, re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)))) for path in paths]
    with contextlib.suppress(AttributeError):
        app.state.path_templates = templates  # type: ignore[attr-defined]
    return templates


def _fill_from_headers(record: RequestRecord, headers: dict[bytes, bytes]) -> None:
    """Endpoints that did not call ``observe_routed`` still say where they routed, in x-msserve-* headers."""
    if record.tier is not None or b"x-msserve-tier" not in headers:
        return
    tiers = headers[b"x-msserve-tier"].decode("latin-1").split(",")
    record.tier = tiers[0] if len(tiers) == 1 else "mixed"
    record.reason = headers.get(b"x-msserve-reason", b"").decode("latin-1") or None
    record.reason_class = record.reason_class or "unknown"
    with contextlib.suppress(ValueError):
        record.score = float(headers[b"x-msserve-score"]) if b"x-msserve-score" in headers else None


def _error_code(body: bytes, headers: dict[bytes, bytes]) -> str | None:
    if not body or len(body) > _ERROR_PEEK_BYTES or b"json" not in headers.get(b"content-type", b""):
        return None
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return str(code) if code is not None else None
