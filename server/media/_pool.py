"""The image decode pool: every Pillow call, block-structure scan and base64 decode runs here, never on the loop.

Its own threads, not the loop's default executor: DNS lookups and the transformers engine share that one, so
a burst of large images would otherwise delay both (and they would delay image work). Bounded twice: at most
``workers`` images are decoded at once, which bounds the memory decoding can take (workers x the decoded-pixel
cap), and at most ``queue`` more wait; past that, a 429 with a stable code, instead of a backlog that grows with
the offered load. A job whose caller has gone (client disconnected, deadline) before it started never runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from server.errors import RateLimitError

P = ParamSpec("P")
T = TypeVar("T")

THREAD_NAME_PREFIX = "msserve-image-decode"


class DecodePool:
    def __init__(self, workers: int = 2, queue: int = 64, *, retry_after_s: int = 1) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("an image decode pool needs at least one worker and a queue of zero or more")
        self.workers = workers
        self.capacity = workers + queue  # running + waiting
        self.retry_after_s = retry_after_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=THREAD_NAME_PREFIX)
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Jobs running or waiting now."""
        return self._pending

    async def run(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``func(*args, **kwargs)`` on a decode thread; refused with a 429 when the pool is full."""
        with self._lock:
            if self._pending >= self.capacity:
                raise RateLimitError(
                    f"the server is decoding {self._pending} images already; retry shortly",
                    code="image_decoder_busy",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self._pending += 1
        try:
            future: Future[T] = self._executor.submit(lambda: func(*args, **kwargs))
        except BaseException:
            self._release(None)
            raise
        # The slot is freed when the job really ends (or is cancelled before it started), not when the caller
        # stops waiting: a cancelled caller must not let more work in while its decode still runs.
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _future: object) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
