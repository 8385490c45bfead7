"""Routing: request features -> score -> Decision(tier, score, reason), and the policy around it."""

from server.routing.decision import Decision, Tier, local_only

__all__ = ["Decision", "Tier", "local_only"]
