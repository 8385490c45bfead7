"""One admitted Azure call: it holds a budget reservation and a circuit-breaker permit until its outcome settles both.

``RoutingPolicy.admit`` makes one; whoever makes the call reports what it streamed (``observe``), that Azure
answered (``answered``, at the first chunk) and, exactly once, how it ended (``finish``). ``finish`` is a plain
call, safe in ``finally`` blocks and cancellation paths, and idempotent.

How each ending is charged (the budget errs high when the real cost is unknown):

    Azure's usage figures came               what they say
    output streamed, then cut off            prompt estimate + the streamed tokens counted (``StreamMeter``)
    refused before any work (4xx, 5xx, 429,  nothing: the reservation is released
      connection refused)
    gone before any output, maybe working    a whole (non-streamed) answer: the full reservation, since Azure
      (cancelled, timed out, deadline)         finishes and bills it anyway; a stream: the prompt estimate

And the breaker: a failure (``BREAKER_FAILURES``) counts against Azure; an answer, a content-filter 400 or another
4xx verdict means Azure is up; a cancellation gives no verdict and only frees a half-open probe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from server.errors import (
    DeadlineExceededError,
    EngineUnavailableError,
    MSServeError,
    RateLimitError,
    UpstreamError,
)
from server.routing.ledger import Reservation
from server.routing.metering import StreamMeter
from server.types import GenerationChunk, Usage

if TYPE_CHECKING:
    from server.routing.policy import Permit, RoutingPolicy

# Failures that say Azure is failing (the same set the dispatcher fails over on).
BREAKER_FAILURES = (UpstreamError, RateLimitError, DeadlineExceededError, EngineUnavailableError)
BlockKind = Literal["circuit", "budget", "ledger"]


class AzureBlocked(Exception):
    """Azure may not be called now: the circuit is open, the budget cannot cover the call, or its ledger failed."""

    def __init__(self, reason: str, *, kind: BlockKind, detail: str | None = None) -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.kind = kind
        self.detail = detail or reason

    def client_error(self) -> MSServeError:
        """What a request that forced Azure gets instead."""
        if self.kind == "ledger":
            return EngineUnavailableError(
                f"Azure is unavailable: {self.detail}; no Azure call is made while spend cannot be counted",
                code="azure_budget_unavailable",
            )
        if self.kind == "budget":
            return RateLimitError(f"the daily Azure budget is spent ({self.detail})", code="azure_budget_exhausted")
        return UpstreamError("Azure is failing (circuit open); try again later", code="azure_circuit_open")


def _maybe_working(error: BaseException) -> bool:
    """Did the call end before any output in a way that leaves Azure possibly working on it (and billing)?"""
    if isinstance(error, DeadlineExceededError):
        return True
    if isinstance(error, MSServeError):
        return error.code == "azure_timeout"
    return True  # cancelled, or an error of ours: the request may have reached Azure


class AzureCall:
    def __init__(
        self,
        policy: RoutingPolicy,
        *,
        reservation: Reservation | None,
        permit: Permit,
        estimate: Usage,
        whole: bool,
    ) -> None:
        self.policy = policy
        self.reservation = reservation
        self.permit = permit
        self.estimate = estimate  # the most the call may use: prompt estimate + max_tokens
        self.whole = whole  # a non-streamed answer
        self.meter = StreamMeter()
        self._verdict = False
        self.finished = False

    def observe(self, chunk: GenerationChunk) -> None:
        self.meter.observe(chunk)

    def answered(self) -> None:
        """Azure answered (its first chunk): it is up, and a half-open probe closes the circuit."""
        if not self._verdict:
            self._verdict = True
            self.policy.record_azure_success(self.permit)

    def finish(self, error: BaseException | None = None, usage: Usage | None = None) -> Usage | None:
        """Settle the breaker and the reservation for however the call ended; the usage charged (None: nothing).

        Only the first call counts.
        """
        if self.finished:
            return None
        self.finished = True
        try:
            self._judge(error)
        finally:
            billed = self._billed(error, usage)
            ledger, reservation = self.policy.ledger, self.reservation
            if ledger is not None and reservation is not None:
                if billed is None:
                    ledger.release(reservation)
                else:
                    ledger.settle(reservation, self.policy.prices.cost("azure", billed))
        return billed

    def _judge(self, error: BaseException | None) -> None:
        if self._verdict:  # after the first chunk only a failure mid-stream is news
            if isinstance(error, BREAKER_FAILURES):
                self.policy.record_azure_failure()
            return
        self._verdict = True
        if error is None or (isinstance(error, MSServeError) and not isinstance(error, BREAKER_FAILURES)):
            self.policy.record_azure_success(self.permit)  # Azure answered, maybe with a 400: it is up
        elif isinstance(error, BREAKER_FAILURES):
            self.policy.record_azure_failure(self.permit)
        else:
            self.policy.breaker.release(self.permit)  # the client left: no verdict on Azure

    def _billed(self, error: BaseException | None, usage: Usage | None) -> Usage | None:
        if usage is not None:
            return usage
        if self.meter.started or error is None:
            return Usage(prompt_tokens=self.estimate.prompt_tokens, completion_tokens=self.meter.completion_tokens)
        if not _maybe_working(error):
            return None
        if self.whole:
            return self.estimate
        return Usage(prompt_tokens=self.estimate.prompt_tokens)
