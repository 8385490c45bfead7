"""A client's score for one of its answers, stored on that answer's outcome row: a label the router learns from."""

from __future__ import annotations

import asyncio

from server.api.feedback.protocol import Feedback
from server.errors import EngineUnavailableError
from server.routing.runtime import LearningRuntime
from server.state.redis_store import RedisUnavailable


async def record(feedback: Feedback, key_name: str | None, learning: LearningRuntime | None) -> bool:
    """True when an answer with this id, made with this API key, was found and scored (another key's is not)."""
    if learning is None:
        return False
    if learning.service is not None:
        await learning.service.stored(feedback.id)  # the answer may have gone out a moment before its row is written
    try:
        return await asyncio.to_thread(learning.store.feedback, feedback.id, key_name, feedback.score)
    except RedisUnavailable:  # the shared outcome store (MSSERVE_REDIS_URL) is down: nothing was recorded
        raise EngineUnavailableError("the outcome store is unavailable; send the feedback again later",
                                     code="feedback_store_unavailable") from None
