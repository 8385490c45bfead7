"""An injected clock: code under test reads ``clock()``, the test moves ``clock.now`` (no sleeping, no wall time)."""

from __future__ import annotations


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
