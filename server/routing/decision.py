"""The router's output: where a request goes, and why, in words a person can read."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Tier = Literal["local", "azure"]


class Decision(BaseModel):
    tier: Tier
    score: float | None = None  # router score in [0, 1]; None when no scoring happened
    reason: str
    # Coarse label for metrics (bounded cardinality): "score", "override", "failover", "no-azure", "cascade", ...
    reason_class: str = "score"
    cascade: bool = False  # answer locally first, escalate on low confidence


def local_only(reason: str = "no Azure endpoint configured", reason_class: str = "no-azure") -> Decision:
    return Decision(tier="local", score=None, reason=reason, reason_class=reason_class)
