"""What a response tells its client about routing: the x-msserve-tier / -score / -reason headers of chat and
captions, and the same three fields as a batch line's ``msserve`` object. Built here only, so all three agree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel

from server.routing.decision import Decision


class _Routed(Protocol):
    """One answered part of a request (a caption) with the decision that routed it."""

    @property
    def tier(self) -> str: ...

    @property
    def score(self) -> float | None: ...

    @property
    def reason(self) -> str: ...


class RoutingSummary(BaseModel):
    tier: str
    score: float | None
    reason: str

    @classmethod
    def of(cls, decision: Decision) -> RoutingSummary:
        return cls(tier=decision.tier, score=decision.score, reason=decision.reason)

    @classmethod
    def of_parts(cls, parts: Sequence[_Routed]) -> RoutingSummary:
        """Several routed parts (a request's captions): every tier that answered, in order; the first's score and
        reason."""
        first = parts[0]
        return cls(tier=",".join(dict.fromkeys(part.tier for part in parts)), score=first.score, reason=first.reason)

    def headers(self, request_id: str) -> dict[str, str]:
        headers = {
            "x-request-id": request_id,
            "x-msserve-tier": self.tier,
            "x-msserve-reason": header_safe(self.reason),
        }
        if self.score is not None:
            headers["x-msserve-score"] = f"{self.score:.3f}"
        return headers


def header_safe(text: str) -> str:
    """Printable ASCII on one line, at most 512 characters: a reason may quote the prompt's words."""
    return text.encode("ascii", "replace").decode("ascii").replace("\r", " ").replace("\n", " ")[:512]
