"""server.engines.loading: an engine's load runs in a daemon thread of its own, so a stopping server need not wait."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.engines.loading import in_load_thread


def test_the_load_runs_in_its_own_daemon_thread_and_its_result_comes_back() -> None:
    def load() -> tuple[str, bool]:
        return threading.current_thread().name, threading.current_thread().daemon

    assert asyncio.run(in_load_thread(load, name="test-load")) == ("test-load", True)


def test_a_failing_load_raises_its_own_error() -> None:
    def load() -> None:
        raise FileNotFoundError("no weights")

    with pytest.raises(FileNotFoundError, match="no weights"):
        asyncio.run(in_load_thread(load, name="test-load"))


def test_abandoning_the_load_neither_waits_for_it_nor_breaks_when_it_ends_later(monkeypatch) -> None:
    release, finished = threading.Event(), threading.Event()
    uncaught: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: uncaught.append(args.exc_value))

    def load() -> str:
        release.wait(10)
        finished.set()
        return "loaded"

    async def abandon() -> None:
        task = asyncio.create_task(in_load_thread(load, name="test-load"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(abandon())  # returns although the load still runs (asyncio.to_thread's would be joined here)
    assert not finished.is_set()
    release.set()  # the load ends after its loop has closed: nothing to deliver to, and no error
    assert finished.wait(5)
    for thread in threading.enumerate():
        if thread.name == "test-load":
            thread.join(5)
    assert uncaught == []
