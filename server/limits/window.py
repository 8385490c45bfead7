"""A sliding one-minute window in one-second buckets: what was counted in the last 60 s, to the second.

At most 60 numbers per key and rate, whatever the traffic; the Redis store keeps the same buckets in a hash
(server.limits.shared), so both stores count and answer alike.
"""

from __future__ import annotations

import collections
import math

from server.limits.policy import WINDOW_S


class MinuteWindow:
    def __init__(self) -> None:
        self._buckets: collections.deque[list[int]] = collections.deque()  # [second, amount], oldest first

    def used(self, now: float) -> int:
        self._prune(now)
        return sum(amount for _, amount in self._buckets)

    def add(self, now: float, amount: int) -> None:
        if amount <= 0:
            return
        self._prune(now)
        second = math.floor(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += amount
        elif self._buckets and self._buckets[-1][0] > second:
            self._buckets[-1][1] += amount  # a clock that stepped back: count it in the newest bucket
        else:
            self._buckets.append([second, amount])

    def wait_until_below(self, now: float, limit: int) -> float:
        """Seconds until less than ``limit`` is counted, as the oldest buckets leave; 0 when it already is."""
        used = self.used(now)
        if used < limit:
            return 0.0
        for second, amount in self._buckets:
            used -= amount
            if used < limit:
                return max(0.0, second + WINDOW_S - now)
        return float(WINDOW_S)  # a limit of 0 is never under: callers pass None for "no limit" instead

    @property
    def empty(self) -> bool:
        return not self._buckets

    def _prune(self, now: float) -> None:
        oldest_kept = math.floor(now) - WINDOW_S + 1  # the bucket of second s counts until s + 60
        while self._buckets and self._buckets[0][0] < oldest_kept:
            self._buckets.popleft()
