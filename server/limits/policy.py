"""What each API key may use, and the interface of the stores that count it (in process, or Redis).

A key's limits: requests per minute, tokens per minute (prompt + completion of answered requests) and, where
the count is shared across replicas, requests in flight. The stores answer ``admit`` with an ``Admission``
(the request goes on; it is counted) or a ``Refusal`` (which limit, and when to come back), and are told
``finish`` once the response is over, with the tokens it used.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from server.config import Settings
from server.errors import RateLimitError

WINDOW_S = 60  # the minute both rates are counted over (a sliding window, in one-second steps)
LimitName = Literal["concurrency", "requests", "tokens"]
CODES: dict[LimitName, str] = {
    "concurrency": "too_many_concurrent_requests",  # the code the per-process cap already answers with
    "requests": "requests_per_minute_exceeded",
    "tokens": "tokens_per_minute_exceeded",
}


class KeyLimits(BaseModel):
    """One key's limits; None: that limit is off."""

    model_config = ConfigDict(frozen=True)

    concurrency: int | None = None  # requests in flight across replicas (a shared store only)
    rpm: int | None = None
    tpm: int | None = None

    @property
    def active(self) -> bool:
        return self.concurrency is not None or self.rpm is not None or self.tpm is not None


class Admission(BaseModel):
    """A request let through: what it holds until ``finish`` and the key's counts after it was added."""

    key: str
    limits: KeyLimits
    lease: str | None = None  # the lease id in the shared store (None: no lease was taken)
    shared: bool = False  # counted in the shared store (False: in this process)
    requests_used: int = 0  # requests in the window, this one included
    tokens_used: int = 0  # tokens in the window before this request


class Refusal(BaseModel):
    key: str
    limit: LimitName
    allowed: int  # the limit that was reached
    retry_after_s: float  # when the key is under the limit again (from the window's oldest counts)

    def error(self) -> RateLimitError:
        what = {"concurrency": "requests in flight", "requests": "requests per minute",
                "tokens": "tokens per minute"}[self.limit]
        wait = max(1, math.ceil(self.retry_after_s))
        return RateLimitError(f"API key {self.key!r} reached its limit of {self.allowed} {what}; retry in {wait}s",
                              code=CODES[self.limit], headers={"retry-after": str(wait)})


class KeyLimitStore(Protocol):
    """Counts requests, tokens and (shared stores) leases per key; the middleware's only view of them."""

    async def admit(self, key: str, limits: KeyLimits) -> Admission | Refusal: ...

    async def finish(self, admission: Admission, tokens: int) -> None:
        """The response is over: free its lease, add the tokens it used. Never raises."""

    async def close(self) -> None: ...


class KeyLimitPolicy:
    """The default limits and the per-key overrides; ``for_key`` is what a request of that key may use."""

    def __init__(self, rpm: int = 0, tpm: int = 0, rpm_overrides: dict[str, int] | None = None,
                 tpm_overrides: dict[str, int] | None = None, concurrency: int | None = None) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.rpm_overrides = dict(rpm_overrides or {})
        self.tpm_overrides = dict(tpm_overrides or {})
        self.concurrency = concurrency or None
        self._cache: dict[str, KeyLimits] = {}

    @classmethod
    def from_settings(cls, settings: Settings, *, shared: bool) -> KeyLimitPolicy:
        """``shared``: the store is shared by the replicas, so the per-key cap on requests in flight
        (MSSERVE_MAX_CONCURRENT_PER_KEY) is counted there too; in one process the Limiter counts it.
        """
        return cls(settings.key_rpm_limit, settings.key_tpm_limit, settings.key_rpm_overrides,
                   settings.key_tpm_overrides, settings.max_concurrent_per_key if shared else None)

    def for_key(self, key: str) -> KeyLimits:
        limits = self._cache.get(key)
        if limits is None:
            rpm = self.rpm_overrides.get(key, self.rpm)
            tpm = self.tpm_overrides.get(key, self.tpm)
            limits = KeyLimits(concurrency=self.concurrency, rpm=rpm or None, tpm=tpm or None)
            self._cache[key] = limits  # key names are the configured ones: bounded
        return limits
