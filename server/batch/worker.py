"""The batch worker: one task that validates input files, runs lines, and finalizes batches.

Fair to live traffic: at most ``batch_concurrency`` lines run at once, and no new line starts while live
requests wait for a slot. Lines are taken in batch order, then line order. On drain (SIGTERM) no new line
starts; at shutdown the lines still running are cancelled unrecorded, so a restart runs them once more.
Everything it decides is re-read from the database on each pass, so a restart resumes wherever it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from server.api.deps import Services
from server.batch.execute import LineResult, run_line
from server.batch.files import FileStorage
from server.batch.protocol import Batch, BatchError, InputLine
from server.batch.store import BatchStore, QueuedLine, new_file_id

log = logging.getLogger(__name__)

LEASE_TTL_S = 30.0  # a worker on another machine that stops renewing is replaced after this
POLL_S = 1.0
# Busy (429) or briefly unavailable (503) is the server's state, not the line's answer: the line waits and runs
# again, RETRY_DELAY_S longer each time; after MAX_ATTEMPTS its last answer goes to the error file.
RETRY_STATUSES = frozenset({429, 503})
MAX_ATTEMPTS = 5
RETRY_DELAY_S = 5.0  # a pass at least this often: expiry and engine readiness are not events
PURGE_EVERY_S = 3600.0
_MAX_REPORTED_ERRORS = 100  # of a malformed input file's problems, how many the batch's errors list


class BatchWorker:
    def __init__(self, store: BatchStore, storage: FileStorage, services: Services, *,
                 clock: Callable[[], float] = time.time, live_waiting: Callable[[], int] = lambda: 0) -> None:
        self.store = store
        self.storage = storage
        self.services = services
        self.concurrency = services.settings.batch_concurrency
        self.max_lines = services.settings.batch_max_lines
        self.clock = clock
        self.live_waiting = live_waiting
        self.lines_done = 0
        self.lines_failed = 0
        self._inflight: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._attempts: dict[tuple[str, int], int] = {}
        self._not_before: dict[tuple[str, int], float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._next_purge = 0.0
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    # -- life -----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batch-worker")

    def poke(self) -> None:
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self._inflight)

    async def stop(self) -> None:
        """Stop taking lines and cancel the running ones; none of them is recorded, so each runs again later."""
        self._stopping = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            tasks.append(self._task)
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.store.release, self.holder)

    async def _loop(self) -> None:
        known = await asyncio.to_thread(self.store.file_ids)
        swept = await asyncio.to_thread(self.storage.sweep, known)
        if swept:
            log.info("batch: removed %d unfinished or orphaned files", swept)
        while not self._stopping:
            self._wake.clear()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch worker pass failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)

    # -- one pass -------------------------------------------------------------------------------------

    async def step(self) -> None:
        now = self.clock()
        if not await asyncio.to_thread(self.store.claim, self.holder, now, LEASE_TTL_S, holder_alive):
            return  # another process on this state volume runs the batches
        if now >= self._next_purge:
            self._next_purge = now + PURGE_EVERY_S
            for file_id in await asyncio.to_thread(self.store.purge, int(now)):
                await asyncio.to_thread(self.storage.remove, file_id)
        if self._stopping or self.services.draining:
            return  # drain: no new line, no new status; what runs is cancelled at shutdown and redone later
        for batch in await asyncio.to_thread(self.store.active_batches):
            if batch.status == "validating":
                await self._validate(batch)
            elif batch.status == "cancelling":
                await self._cancel_running(batch.id)
                await self._finalize(batch.id, "cancelled")
            elif batch.status == "finalizing":
                await self._finalize(batch.id, "completed")
            elif batch.expires_at is not None and now >= batch.expires_at:
                await self._cancel_running(batch.id)
                await self._expire(batch)
            else:
                await self._fill(batch)

    async def _fill(self, batch: Batch) -> None:
        now = self.clock()
        mine = {line for (batch_id, line) in self._inflight if batch_id == batch.id}
        later = {line for (batch_id, line), at in self._not_before.items() if batch_id == batch.id and at > now}
        free = self.concurrency - len(self._inflight)
        queued = await asyncio.to_thread(self.store.queued_lines, batch.id, skip=mine | later, limit=max(free, 1))
        if not queued and not mine and not later:
            if await asyncio.to_thread(self.store.set_status, batch.id, "finalizing", int(self.clock()),
                                       only_from=("in_progress",)):
                await self._finalize(batch.id, "completed")
            return
        if free <= 0 or self.live_waiting() > 0 or not self.services.engine.health().ready:
            return  # live requests first; and a line sent to an engine still loading would fail for nothing
        for line in queued[:free]:
            task = asyncio.create_task(self._run(batch, line), name=f"batch-line-{batch.id}-{line.line}")
            self._inflight[(batch.id, line.line)] = task

    async def _run(self, batch: Batch, line: QueuedLine) -> None:
        request_id = f"batch_req_{uuid.uuid4().hex}"
        try:
            try:
                result = await run_line(batch.endpoint, line.body, self.services, request_id)
            except Exception:
                log.exception("batch %s line %d failed unexpectedly", batch.id, line.line)
                result = LineResult(status_code=500, body={"error": {
                    "message": "internal error", "type": "server_error", "param": None, "code": "internal_error"}})
            if self._stopping or (self.services.draining and result.status_code == 503):
                return  # the server going away is not the line's answer: it runs again after the restart
            key = (batch.id, line.line)
            if result.status_code in RETRY_STATUSES and self._attempts.get(key, 1) < MAX_ATTEMPTS:
                self._attempts[key] = self._attempts.get(key, 1) + 1
                self._not_before[key] = self.clock() + RETRY_DELAY_S * (self._attempts[key] - 1)
                return
            self._attempts.pop(key, None)
            self._not_before.pop(key, None)
            output = {
                "id": request_id,
                "custom_id": line.custom_id,
                "response": {"status_code": result.status_code, "request_id": request_id, "body": result.body,
                             "msserve": result.msserve},
                "error": None,
            }
            if await asyncio.to_thread(self.store.record, batch.id, line.line, result.status_code, output):
                if 200 <= result.status_code < 300:
                    self.lines_done += 1
                else:
                    self.lines_failed += 1
        finally:
            self._inflight.pop((batch.id, line.line), None)
            self.poke()

    async def _cancel_running(self, batch_id: str) -> None:
        tasks = [task for (owner, _), task in list(self._inflight.items()) if owner == batch_id]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    # -- validation -----------------------------------------------------------------------------------

    async def _validate(self, batch: Batch) -> None:
        now = int(self.clock())
        path = None
        if await asyncio.to_thread(self.store.get_file_any, batch.input_file_id) is not None:
            path = self.storage.path(batch.input_file_id)
        lines, errors = await asyncio.to_thread(read_input, path, batch.endpoint, self.max_lines)
        if errors:
            await asyncio.to_thread(self.store.fail, batch.id, errors, now)
            log.info("batch %s failed validation: %s", batch.id, errors[0].message)
            return
        await asyncio.to_thread(self.store.start, batch.id, lines, now)
        self.poke()

    # -- the end --------------------------------------------------------------------------------------

    async def _expire(self, batch: Batch) -> None:
        for line, custom_id in await asyncio.to_thread(self.store.undone, batch.id):
            output = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": None,
                      "error": {"code": "batch_expired",
                                "message": "This request could not be executed before the completion window "
                                           "expired."}}
            await asyncio.to_thread(self.store.record, batch.id, line, 0, output)
        await self._finalize(batch.id, "expired")

    async def _finalize(self, batch_id: str, status: str) -> None:
        batch = await asyncio.to_thread(self.store.get_batch, batch_id)
        if batch is None:
            return
        files: list[tuple[str, str, str, int]] = []
        for kind, ok, count in (("output", True, batch.request_counts.completed),
                                ("error", False, batch.request_counts.failed)):
            if count:
                file_id = new_file_id()
                size = await asyncio.to_thread(self.storage.write_lines, file_id, self.store.results(batch_id, ok=ok))
                files.append((kind, file_id, f"{batch_id}_{kind}.jsonl", size))
        owner = await asyncio.to_thread(self.store.owner_of, batch_id)
        await asyncio.to_thread(self.store.finish, batch_id, status, int(self.clock()), files, owner)
        log.info("batch %s %s: %d done, %d failed", batch_id, status, batch.request_counts.completed,
                 batch.request_counts.failed)


def holder_alive(holder: str) -> bool:
    """Whether a lease holder ("host:pid:token") may still run. Only this host's processes can be checked;
    this process's own pid under another token is an earlier life of it (a container restarted with pid 1)."""
    host, _, rest = holder.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_input(path: Path | None, endpoint: str, max_lines: int) -> tuple[list[tuple[str, dict[str, Any]]],
                                                                           list[BatchError]]:
    """The input file's (custom_id, body) lines, or what is wrong with it (then the batch fails, as OpenAI's)."""
    if path is None or not path.is_file():
        return [], [BatchError(code="invalid_file", message="the input file does not exist (it was deleted)",
                               param="input_file_id")]
    lines: list[tuple[str, dict[str, Any]]] = []
    errors: list[BatchError] = []
    seen: set[str] = set()
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            if len(lines) >= max_lines:
                errors.append(BatchError(code="too_many_requests", line=number,
                                         message=f"the input file has more than {max_lines} requests"))
                break
            try:
                item = InputLine.model_validate(json.loads(raw))
            except (ValueError, UnicodeDecodeError) as exc:  # JSON and pydantic errors are both ValueErrors
                message = _first_error(exc)
                errors.append(BatchError(code="invalid_json_line", line=number, message=message))
                continue
            if item.url != endpoint:
                errors.append(BatchError(code="mismatched_endpoint", line=number, param="url",
                                         message=f"the line's url {item.url!r} is not the batch's endpoint "
                                                 f"{endpoint!r}; a batch has one endpoint"))
            elif item.custom_id in seen:
                errors.append(BatchError(code="duplicate_custom_id", line=number, param="custom_id",
                                         message=f"custom_id {item.custom_id!r} appears more than once"))
            seen.add(item.custom_id)
            lines.append((item.custom_id, item.body))
            if len(errors) >= _MAX_REPORTED_ERRORS:
                break
    if not lines and not errors:
        errors.append(BatchError(code="empty_file", message="the input file has no requests"))
    return lines, errors


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return f"the line is not valid JSON: {exc}"
