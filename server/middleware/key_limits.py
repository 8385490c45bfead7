"""Per-key limits: requests and tokens per minute, and (with Redis) requests in flight across replicas.

Runs on the requests that take a model slot (``is_limited``) of an authenticated key, except feedback on an
answer (not a model call: scoring answers must not eat into the requests a key may make), before the body is read:
a key over a limit is answered 429 with ``Retry-After`` (the seconds until the window lets it in again) and its
body is never read. An admitted request counts one request at once and its tokens (prompt + completion, from the
usage its endpoint notes) when the response is over, streams included; its lease, if any, is freed then, however
the request ends. Admitted responses carry OpenAI's ``x-ratelimit-limit-*`` / ``x-ratelimit-remaining-*``
headers for the rates the key is limited on.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.limits.metrics import KeyLimitStats
from server.limits.policy import Admission, KeyLimitPolicy, KeyLimitStore, Refusal
from server.limits.usage import METER_KEY, UsageMeter
from server.middleware._respond import scope_state, send_error
from server.middleware.concurrency import is_limited

FEEDBACK_PATH = "/v1/feedback"

class KeyLimitsMiddleware:
    def __init__(self, app: ASGIApp, policy: KeyLimitPolicy, store: KeyLimitStore, stats: KeyLimitStats) -> None:
        self.app = app
        self.policy = policy
        self.store = store
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_limited(scope) or scope["path"] == FEEDBACK_PATH:
            await self.app(scope, receive, send)
            return
        state = scope_state(scope)
        key = state.get("key_name")
        if not isinstance(key, str):  # no keys configured: there is no key to count against
            await self.app(scope, receive, send)
            return
        limits = self.policy.for_key(key)
        if not limits.active:
            await self.app(scope, receive, send)
            return
        decision = await self.store.admit(key, limits)
        if isinstance(decision, Refusal):
            self.stats.refusals[(decision.key, decision.limit)] += 1
            await send_error(send, decision.error())
            return
        meter = UsageMeter()
        if limits.tpm is not None:
            state[METER_KEY] = meter
        try:
            await self.app(scope, receive, _with_headers(send, decision))
        finally:
            await self.store.finish(decision, meter.tokens)


def _with_headers(send: Send, admission: Admission) -> Send:
    """OpenAI's x-ratelimit-limit-* and x-ratelimit-remaining-* headers for the rates the key is limited on."""
    limits = admission.limits
    headers: list[tuple[bytes, bytes]] = []
    if limits.rpm is not None:
        headers += _rate_headers("requests", limits.rpm, limits.rpm - admission.requests_used)
    if limits.tpm is not None:
        headers += _rate_headers("tokens", limits.tpm, limits.tpm - admission.tokens_used)
    if not headers:
        return send

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return sending


def _rate_headers(kind: str, limit: int, remaining: int) -> list[tuple[bytes, bytes]]:
    return [(f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, remaining)).encode())]
