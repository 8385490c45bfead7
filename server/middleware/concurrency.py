"""Bound the model requests (POST /v1/*) in flight: running slots, a bounded wait queue, a cap per API key.

Past the queue, the per-key cap or the queue timeout: 429 with ``Retry-After``. While draining for shutdown:
503 with ``Retry-After``, for new requests and for those still waiting. A slot is held until the response
is over, streams included, and freed however the request ends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from starlette.types import ASGIApp, Receive, Scope, Send

from server.config import Settings
from server.errors import EngineUnavailableError, MSServeError, RateLimitError
from server.middleware._respond import scope_state, send_error


class Limiter:
    def __init__(self, max_running: int, max_waiting: int, per_key: int | None = None,
                 queue_timeout_s: float = 30.0, retry_after_s: int = 1) -> None:
        self.max_running = max(1, max_running)
        self.max_waiting = max(0, max_waiting)
        self.per_key = per_key
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.running = 0
        self.draining = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._by_key: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> Limiter:
        return cls(settings.max_concurrent_requests, settings.max_waiting_requests, settings.max_concurrent_per_key,
                   settings.queue_timeout_s, settings.retry_after_s)

    @property
    def waiting(self) -> int:
        return sum(not waiter.done() for waiter in self._waiters)

    def drain(self) -> None:
        """Refuse new requests and send the waiting ones away; running ones finish."""
        self.draining = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self._draining_error())

    async def acquire(self, key: str | None) -> None:
        if self.draining:
            raise self._draining_error()
        if key is not None and self.per_key is not None and self._by_key[key] >= self.per_key:
            raise self._busy(f"API key {key!r} already has {self.per_key} requests in flight",
                             "too_many_concurrent_requests")
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            self._count(key, +1)
            return
        if self.waiting >= self.max_waiting:
            raise self._busy(f"server busy: {self.running} requests running and {self.waiting} waiting", "queue_full")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._count(key, +1)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.queue_timeout_s)
        except BaseException as exc:
            self._count(key, -1)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release_slot()  # the slot arrived just as we gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise self._busy(f"no slot freed within {self.queue_timeout_s:g}s", "queue_timeout") from None
            raise

    def release(self, key: str | None) -> None:
        self._count(key, -1)
        self._release_slot()

    def _release_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the next waiter: running stays the same
                return
        self.running -= 1

    def _count(self, key: str | None, delta: int) -> None:
        if key is None:
            return
        self._by_key[key] += delta
        if self._by_key[key] <= 0:
            del self._by_key[key]

    def _busy(self, message: str, code: str) -> RateLimitError:
        return RateLimitError(message, code=code, headers={"retry-after": str(self.retry_after_s)})

    def _draining_error(self) -> EngineUnavailableError:
        return EngineUnavailableError("the server is shutting down; retry on another replica",
                                      code="server_draining", headers={"retry-after": str(self.retry_after_s)})


def is_limited(scope: Scope) -> bool:
    path: str = scope.get("path", "")
    if path.startswith(("/v1/files", "/v1/batches")):
        return False  # file and batch bookkeeping never holds a model slot (batch lines have their own cap)
    return scope["type"] == "http" and scope["method"] == "POST" and path.startswith("/v1/")


class ConcurrencyLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: Limiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_limited(scope):
            await self.app(scope, receive, send)
            return
        key = scope_state(scope).get("key_name")
        key_name = key if isinstance(key, str) else None
        try:
            await self.limiter.acquire(key_name)
        except MSServeError as error:
            await send_error(send, error)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.release(key_name)
