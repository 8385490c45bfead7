"""One holder at a time, waiters served lowest priority first, in arrival order within a priority.

The transformers engine runs one request at a time; with this gate instead of a FIFO semaphore, a live request
(priority 0) that arrives while batch lines (GenerationRequest.priority > 0) wait goes ahead of them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class PriorityGate:
    def __init__(self) -> None:
        self._held = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def locked(self) -> bool:
        return self._held

    async def acquire(self, priority: int = 0) -> None:
        if not self._held and not self._waiters:
            self._held = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), waiter))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed the gate just as it gave up: pass it on
            else:
                waiter.cancel()  # left in the heap; release() skips it
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                waiter.set_result(None)  # the gate moves to this waiter: still held
                return
        self._held = False
