"""Bound the model requests (POST /v1/*) in flight: running slots, a bounded wait queue, a cap per API key.

Past the queue, the per-key cap or the queue timeout: 429 with ``Retry-After``. While draining for shutdown:
503 with ``Retry-After``, for new requests and for those still waiting. A slot is held until the response
is over, streams included, and freed however the request ends.

The slot is taken once the whole body is in, not before: a client trickling its body holds its own
connection, never a slot others need (the body's size and arrival rate are bounded by the body-limit
middleware outside this one). The body read here is handed to the app unchanged. What that buffering may
hold is bounded in bytes (``max_buffered_bytes``, all bodies not yet in a slot together; past it 429), not in
count: a trickler holds a few bytes and its own connection, and the count of bodies arriving per API key falls
under the per-key cap like running and waiting requests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.config import Settings
from server.errors import EngineUnavailableError, MSServeError, RateLimitError
from server.middleware._respond import scope_state, send_error


class Limiter:
    def __init__(self, max_running: int, max_waiting: int, per_key: int | None = None,
                 queue_timeout_s: float = 30.0, retry_after_s: int = 1, max_buffered_bytes: int = 2**30) -> None:
        self.max_running = max(1, max_running)
        self.max_waiting = max(0, max_waiting)
        self.per_key = per_key
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.running = 0
        self.reading = 0  # model requests whose body is still arriving (they hold no slot yet)
        self.buffered_bytes = 0  # bodies read but not yet in a slot
        self.max_buffered_bytes = max_buffered_bytes
        self._reading_by_key: collections.Counter[str] = collections.Counter()
        self.draining = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._by_key: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> Limiter:
        per_key = settings.max_concurrent_per_key or None  # 0 turns the per-key cap off
        return cls(settings.max_concurrent_requests, settings.max_waiting_requests, per_key,
                   settings.queue_timeout_s, settings.retry_after_s, settings.max_buffered_body_bytes)

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

    def start_reading(self, key: str | None) -> None:
        """Admit one more body to be read before its request asks for a slot (429 past the bounds)."""
        if self.draining:
            raise self._draining_error()
        if key is not None and self.per_key is not None and self._by_key[key] + self._reading_by_key[key] >= \
                self.per_key:
            raise self._busy(f"API key {key!r} already has {self.per_key} requests in flight",
                             "too_many_concurrent_requests")
        self.reading += 1
        if key is not None:
            self._reading_by_key[key] += 1

    def buffer(self, size: int) -> None:
        """Count ``size`` more bytes held before a slot; 429 (connection closed) past ``max_buffered_bytes``."""
        if self.buffered_bytes + size > self.max_buffered_bytes:
            error = self._busy("server busy: request bodies waiting for a slot fill the memory set aside for them",
                               "queue_full")
            error.headers["connection"] = "close"  # the rest of this body is never read
            raise error
        self.buffered_bytes += size

    def unbuffer(self, size: int) -> None:
        self.buffered_bytes -= size

    def stop_reading(self, key: str | None) -> None:
        self.reading -= 1
        if key is not None:
            self._reading_by_key[key] -= 1
            if self._reading_by_key[key] <= 0:
                del self._reading_by_key[key]

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
    # /openai/...: Azure's path forms of the same endpoints
    return scope["type"] == "http" and scope["method"] == "POST" and path.startswith(("/v1/", "/openai/"))


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
            self.limiter.start_reading(key_name)
        except MSServeError as error:
            await send_error(send, error)
            return
        buffered = [0]  # bytes this request holds in the limiter's buffer budget, until it has a slot
        try:
            try:
                body = await _read_body(receive, self.limiter, buffered)
            finally:
                self.limiter.stop_reading(key_name)
            if body is None:
                return  # the client left, or the body limits refused the body and answered already
            await self.limiter.acquire(key_name)
        except MSServeError as error:
            await send_error(send, error)
            return
        finally:
            self.limiter.unbuffer(buffered[0])
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.limiter.release(key_name)


async def _read_body(receive: Receive, limiter: Limiter, buffered: list[int]) -> bytes | None:
    """The whole request body, or None when a disconnect came first; counted into ``buffered[0]`` as it comes."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        limiter.buffer(len(chunk))
        buffered[0] += len(chunk)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body in one message, then the real channel (so the app still hears a disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
