"""The embedded store: requests and tokens per minute per key, in this process.

Requests in flight per key are not counted here: in one process the Limiter (server.middleware.concurrency)
already caps them. The clock is injected (monotonic by default: a wall-clock step cannot open or shut a window).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from server.limits.policy import Admission, KeyLimits, Refusal
from server.limits.window import MinuteWindow


class LocalKeyStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._requests: dict[str, MinuteWindow] = {}
        self._tokens: dict[str, MinuteWindow] = {}

    async def admit(self, key: str, limits: KeyLimits) -> Admission | Refusal:
        return self.admit_now(key, limits)

    def admit_now(self, key: str, limits: KeyLimits) -> Admission | Refusal:
        """``admit`` without awaiting anything: the check and the count happen in one step."""
        now = self.clock()
        requests = self._requests.setdefault(key, MinuteWindow())
        tokens = self._tokens.setdefault(key, MinuteWindow())
        if limits.rpm is not None and requests.used(now) >= limits.rpm:
            return Refusal(key=key, limit="requests", allowed=limits.rpm,
                           retry_after_s=requests.wait_until_below(now, limits.rpm))
        # Tokens are known once an answer is over: a request is let in while the key's window is under its limit.
        if limits.tpm is not None and tokens.used(now) >= limits.tpm:
            return Refusal(key=key, limit="tokens", allowed=limits.tpm,
                           retry_after_s=tokens.wait_until_below(now, limits.tpm))
        requests.add(now, 1)
        return Admission(key=key, limits=limits, requests_used=requests.used(now), tokens_used=tokens.used(now))

    async def finish(self, admission: Admission, tokens: int) -> None:
        self.add_tokens(admission.key, tokens)

    def add_tokens(self, key: str, tokens: int) -> None:
        if tokens > 0:
            self._tokens.setdefault(key, MinuteWindow()).add(self.clock(), tokens)

    async def close(self) -> None:
        return None
