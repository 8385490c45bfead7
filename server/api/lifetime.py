"""A request's lifetime: its deadline, and whether its client is still there.

Streamed responses hear a disconnect through Starlette's StreamingResponse, which closes the body generator and
so the engine stream. A non-streamed answer (chat without ``stream``, captions) has nobody listening while it
is worked on: ``guard`` runs that work against the client's disconnect and the deadline, and cancels it when
either comes first. Cancelling closes the engine stream (every path through dispatch closes it on the way out),
so the engine stops within a step instead of finishing for nobody. Image fetches run inside the guard, so they
count against the same deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.types import Receive

from server.config import Settings
from server.errors import DeadlineExceededError, MSServeError
from server.telemetry import record_of

T = TypeVar("T")


class ClientDisconnected(MSServeError):
    """The client left before its answer was ready. Nobody reads this response; the status is for the logs."""

    status_code = 499  # nginx's "client closed request"
    error_type = "client_closed_request"
    default_code = "client_closed_request"


def new_deadline(settings: Settings) -> float:
    """The request's deadline on ``time.monotonic()``: everything after the body is in counts against it."""
    return time.monotonic() + settings.request_timeout_s


def deadline_exceeded(timeout_s: float | None = None) -> DeadlineExceededError:
    limit = f" of {timeout_s:g}s" if timeout_s is not None else ""
    return DeadlineExceededError(f"the request ran past its deadline{limit}", code="deadline_exceeded")


@contextlib.asynccontextmanager
async def until(deadline: float | None) -> AsyncIterator[None]:
    """Cancel the block when the ``time.monotonic()`` deadline passes, then raise 504 ``deadline_exceeded``."""
    if deadline is None:
        yield
        return
    try:
        async with asyncio.timeout(deadline - time.monotonic()):
            yield
    except TimeoutError:
        raise deadline_exceeded() from None


async def guard(request: Request, deadline: float | None, work: Awaitable[T]) -> T:
    """``await work``, unless the client disconnects (499, work cancelled) or the deadline passes first (504).

    Call it once the request body has been read: from then on the channel carries only the disconnect.
    """
    task = asyncio.ensure_future(_bounded(work, deadline))
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    left = False
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        left = not task.done()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):  # whatever it raises now, the client is not there to hear it
                await task
        watcher.cancel()
        with contextlib.suppress(BaseException):
            await watcher
    if left:
        record = record_of(request)
        if record is not None:
            record.outcome = "client_closed"
        raise ClientDisconnected("the client closed the connection before the answer was ready")
    return task.result()


async def _bounded(work: Awaitable[T], deadline: float | None) -> T:
    async with until(deadline):
        return await work


async def _disconnected(receive: Receive) -> None:
    """Return when the client disconnects. Called once the body has been read, so nothing else is consumed."""
    while (await receive())["type"] != "http.disconnect":
        pass
