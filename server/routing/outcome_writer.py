"""One thread writes outcome rows, in batches: one transaction (one fsync) for whatever has queued up.

Every answered request leaves a row, and a commit with ``synchronous=FULL`` waits for the disk (a few ms). Writing
each row from the shared thread pool would, under load, park every pool thread on the database lock; here one
thread of its own takes the queue, builds the rows (the feature vector, the embedding) and commits them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from server.routing.outcomes import Outcome, OutcomeStorage

log = logging.getLogger(__name__)
T = TypeVar("T")
_MAX_BATCH = 256
_STOP = object()


class OutcomeWriter(Generic[T]):
    def __init__(self, store: OutcomeStorage, build: Callable[[T], Outcome | None], *, prune_every: int = 1000) -> None:
        self.store = store
        self.build = build
        self.prune_every = prune_every
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._written = 0

    async def write(self, item: T) -> bool:
        """Queue ``item``; True once its row is committed (False: no row for it, or the write failed)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._start()
        self._queue.put((item, loop, future))
        return await future

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="outcome-writer", daemon=True)
                self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then stop the thread."""
        with self._lock:
            thread = self._thread
            self._thread = None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                batch.append(more)
            self._commit(batch)  # type: ignore[arg-type]
            if stop:
                return

    def _commit(self, batch: list[tuple[T, asyncio.AbstractEventLoop, asyncio.Future[bool]]]) -> None:
        rows: list[Outcome | None] = []
        for item, _, _ in batch:
            try:
                rows.append(self.build(item))
            except Exception:
                log.exception("router outcome row could not be built")
                rows.append(None)
        ok = True
        try:
            self.store.add_many([row for row in rows if row is not None])
        except Exception:
            log.exception("router outcome rows could not be written")
            ok = False
        for (_, loop, future), row in zip(batch, rows, strict=True):
            _resolve(loop, future, ok and row is not None)
        before = self._written // self.prune_every
        self._written += sum(row is not None for row in rows)
        if ok and self._written // self.prune_every > before:  # retention, applied as rows come in
            try:
                self.store.prune()
            except Exception:
                log.exception("router outcome retention failed")


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future[bool], value: bool) -> None:
    def set_result() -> None:
        if not future.done():
            future.set_result(value)

    with contextlib.suppress(RuntimeError):  # the loop is closed (shutdown): nobody waits any more
        loop.call_soon_threadsafe(set_result)
