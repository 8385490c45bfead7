"""Engine loads run in a daemon thread of their own, not in asyncio's default executor.

``asyncio.run`` (uvicorn's) joins the default executor's threads when its loop ends, so a load running there kept a
stopped server alive until the load was done: minutes for Mistral Small 3.1 (a download, vLLM starting its engine
processes, the weights read). A daemon thread is not waited for; ``server.serving`` then stops what the load
started and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_load_thread(load: Callable[[], T], *, name: str) -> T:
    """``load()`` in a new daemon thread; cancelling the await leaves the thread to finish (or die with the process)."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()

    def deliver(settle: Callable[[Any], None], value: Any) -> None:
        def settle_unless_abandoned() -> None:
            if not outcome.done():  # done: the awaiting task was cancelled
                settle(value)

        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped while this loaded
            loop.call_soon_threadsafe(settle_unless_abandoned)

    def run() -> None:
        try:
            result = load()
        except Exception as exc:
            deliver(outcome.set_exception, exc)
        else:
            deliver(outcome.set_result, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await outcome
