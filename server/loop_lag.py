"""Event-loop lag: how late a short sleep wakes up is how long something else held the loop.

One blocked step (a quadratic regex, an image decoded on the loop, a full garbage collection) stalls every
request and probe at once; this makes such steps visible as a metric and a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Histogram

LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOOP_LAG_INTERVAL_S = 0.025  # short, so a measured lag is at most this much under the real blocked time

log = logging.getLogger(__name__)


class LoopLagMonitor:
    """Measure how long the event loop is blocked: sleep a short interval, see how late the wake-up comes.

    Every sample goes to the ``msserve_event_loop_lag_seconds`` histogram; a lag over ``warn_s`` (one step that
    ran that long without yielding: a quadratic regex, a decode on the loop, a full GC) is logged as a warning,
    so the next freeze shows up in production before a user reports it. It observes only. ``clock`` and
    ``sleep`` are injectable for tests.
    """

    def __init__(self, histogram: Histogram, *, warn_s: float = 0.1, interval_s: float = LOOP_LAG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.histogram = histogram
        self.warn_s = warn_s
        self.interval_s = interval_s
        self.clock = clock
        self.sleep = sleep
        self.worst_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> float:
        started = self.clock()
        await self.sleep(self.interval_s)
        lag = max(0.0, self.clock() - started - self.interval_s)
        self.histogram.observe(lag)
        self.worst_s = max(self.worst_s, lag)
        if lag > self.warn_s:
            log.warning(
                "event loop blocked for %.0f ms: one step ran that long without yielding (every request waited)",
                lag * 1e3)
        return lag

    async def run(self) -> None:
        while True:
            await self.sample()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="event-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
