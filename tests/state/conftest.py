"""Shared-state test helpers: a wall clock the test moves by hand (leases and cool-downs compare wall time)."""

from __future__ import annotations

import pytest


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()
