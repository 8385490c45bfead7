"""The batch store, input validation and the worker's clock-driven paths on a real SQLite database (no engine)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from server.api.deps import Services
from server.batch.files import FileStorage
from server.batch.protocol import COMPLETION_WINDOW_S, CreateBatchRequest
from server.batch.store import COMPONENT, MIGRATIONS, BatchStore, new_file_id
from server.batch.worker import PURGE_EVERY_S, BatchWorker, read_input
from server.config import Settings
from server.engines.base import EngineHealth
from server.state import StateDB

DAY = 86400


def make_store(tmp_path: Path, retention_s: float = 7 * DAY) -> BatchStore:
    return BatchStore(StateDB(tmp_path), retention_s=retention_s)


def started_batch(store: BatchStore, owner: str = "alice", now: int = 1000, lines: int = 3) -> str:
    file_id = new_file_id()
    store.add_file(file_id, owner, "in.jsonl", "batch", 10, now)
    batch = store.create_batch(owner, CreateBatchRequest(input_file_id=file_id, endpoint="/v1/chat/completions",
                                                         completion_window="24h"), now)
    store.start(batch.id, [(f"c{i}", {"messages": []}) for i in range(lines)], now)
    return batch.id


def result(custom_id: str) -> dict[str, Any]:
    return {"custom_id": custom_id, "response": {"status_code": 200, "body": {}}, "error": None}


def test_migrations_are_versioned(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.db.version(COMPONENT) == len(MIGRATIONS)
    make_store(tmp_path)  # a second open migrates nothing and fails nothing
    assert store.db.version(COMPONENT) == len(MIGRATIONS)


def test_a_line_is_recorded_once(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    batch_id = started_batch(store)
    assert store.record(batch_id, 1, 200, result("c1"))
    assert not store.record(batch_id, 1, 200, result("c1"))  # a second answer for the same line is dropped
    assert store.record(batch_id, 2, 400, result("c2"))
    batch = store.get_batch(batch_id)
    assert batch is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (3, 1, 1)
    assert [line.line for line in store.queued_lines(batch_id, skip=set(), limit=10)] == [0]
    assert [json.loads(r)["custom_id"] for r in store.results(batch_id, ok=True)] == ["c1"]
    assert [json.loads(r)["custom_id"] for r in store.results(batch_id, ok=False)] == ["c2"]


def test_reopened_store_keeps_results_and_queue(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    batch_id = started_batch(store, lines=4)
    store.record(batch_id, 0, 200, result("c0"))
    store.db.close()  # as a crash would leave it: committed lines only
    reopened = make_store(tmp_path)
    assert [line.custom_id for line in reopened.queued_lines(batch_id, skip=set(), limit=10)] == ["c1", "c2", "c3"]
    assert [line.line for line in reopened.queued_lines(batch_id, skip={1}, limit=1)] == [2]


def test_owner_scoping(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    batch_id = started_batch(store, owner="alice")
    assert store.get_batch(batch_id, "bob") is None and store.get_batch(batch_id, "alice") is not None
    assert store.list_batches("bob", after=None, limit=10) == ([], False)
    assert store.request_cancel(batch_id, "bob", 2000) is None
    file_id = store.list_files("alice", purpose=None, after=None, limit=10, ascending=True)[0][0].id
    assert not store.delete_file(file_id, "bob") and store.get_file(file_id, "alice") is not None


def test_retention_purges_old_files_and_finished_batches(tmp_path: Path) -> None:
    store = make_store(tmp_path, retention_s=DAY)
    old = started_batch(store, now=1000)
    store.finish(old, "completed", 1000, [], "alice")
    running = started_batch(store, now=1000)
    assert store.purge(1000 + DAY - 1) == []
    removed = store.purge(1000 + DAY)
    assert len(removed) == 2  # both input files
    assert store.get_batch(old) is None
    assert store.get_batch(running) is not None  # an unfinished batch is never purged under its worker


def test_read_input_reports_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    good = {"custom_id": "a", "method": "POST", "url": "/v1/captions", "body": {"image_urls": ["data:,"]}}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "method": "GET", "custom_id": "b"}) + "\n")
    _, errors = read_input(path, "/v1/captions", 10)
    assert [(e.code, e.line) for e in errors] == [("invalid_json_line", 3)]
    path.write_text("")
    assert read_input(path, "/v1/captions", 10)[1][0].code == "empty_file"
    assert read_input(None, "/v1/captions", 10)[1][0].code == "invalid_file"
    path.write_text(json.dumps(good) + "\n")
    assert read_input(path, "/v1/captions", 10) == ([("a", {"image_urls": ["data:,"]})], [])


def test_a_batch_past_its_window_expires(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    batch_id = started_batch(store, now=1000, lines=3)
    store.record(batch_id, 0, 200, result("c0"))
    now = [1000.0 + COMPLETION_WINDOW_S]
    services = cast(Services, SimpleNamespace(settings=Settings(), draining=False))
    worker = BatchWorker(store, FileStorage(tmp_path / "files"), services, clock=lambda: now[0])
    asyncio.run(worker.step())
    batch = store.get_batch(batch_id)
    assert batch is not None and batch.status == "expired" and batch.expired_at == int(now[0])
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 2)
    assert batch.output_file_id and batch.error_file_id
    errors = [json.loads(line) for line in worker.storage.path(batch.error_file_id).read_text().splitlines()]
    assert [(e["custom_id"], e["response"], e["error"]["code"]) for e in errors] == [
        ("c1", None, "batch_expired"), ("c2", None, "batch_expired")]


@pytest.mark.parametrize("bad", ["../etc/passwd", "file-../../x", "file-" + "g" * 32])
def test_ids_never_become_paths(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        FileStorage(tmp_path).path(bad)


def test_sweep_removes_orphans_and_partial_uploads(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    kept, orphan = new_file_id(), new_file_id()
    storage.write_lines(kept, ["{}"])
    storage.write_lines(orphan, ["{}"])
    (tmp_path / ".upload-123").write_bytes(b"partial")
    assert storage.sweep({kept}) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept]


def test_one_worker_per_state_database(tmp_path: Path) -> None:
    first, second = make_store(tmp_path), make_store(tmp_path)
    alive = {"host:1:a": True}
    assert first.claim("host:1:a", 100.0, 30.0, lambda holder: alive[holder])
    assert not second.claim("host:2:b", 110.0, 30.0, lambda holder: alive[holder])  # held and alive
    assert first.claim("host:1:a", 120.0, 30.0, lambda holder: alive[holder])  # renewed
    assert not second.claim("host:2:b", 149.0, 30.0, lambda holder: alive[holder])
    assert second.claim("host:2:b", 150.0, 30.0, lambda holder: alive[holder])  # expired: taken over
    alive["host:2:b"] = False
    assert first.claim("host:1:a", 151.0, 30.0, lambda holder: alive[holder])  # its holder is gone: taken over
    first.release("host:1:a")
    assert second.claim("host:2:b", 152.0, 30.0, lambda holder: True)  # released: free


def test_a_dead_holder_on_this_host_is_recognised() -> None:
    import os
    import socket
    import subprocess
    import sys

    from server.batch.worker import holder_alive

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    assert not holder_alive(f"{host}:{gone.stdout.strip()}:x")
    assert not holder_alive(f"{host}:{os.getpid()}:an-earlier-life")
    assert holder_alive(f"{host}:1:x")  # pid 1 runs (init)
    assert holder_alive("another-host:123:x")  # cannot be checked from here: the lease expiry decides


class _ReadyEngine:
    def health(self) -> EngineHealth:
        return EngineHealth(ready=True, state="ready")


def test_lines_wait_while_live_requests_wait_and_stopped_lines_stay_queued(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    batch_id = started_batch(store, lines=3)
    services = cast(Services, SimpleNamespace(settings=Settings(batch_concurrency=2), draining=False,
                                              engine=_ReadyEngine()))
    waiting = [1]

    async def scenario() -> tuple[int, int]:
        worker = BatchWorker(store, FileStorage(tmp_path / "files"), services, clock=lambda: 2000.0,
                             live_waiting=lambda: waiting[0])
        await worker.step()
        held = worker.running  # a live request waits for a slot: no batch line starts
        waiting[0] = 0
        await worker.step()
        started = worker.running
        await worker.stop()  # shutdown: the running lines are cancelled before they answer
        return held, started

    assert asyncio.run(scenario()) == (0, 2)  # at most batch_concurrency at once
    assert len(store.queued_lines(batch_id, skip=set(), limit=10)) == 3  # nothing recorded: all run again later


def test_many_lines_go_in_in_order_and_a_second_start_replaces_them(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    batch_id = started_batch(store, lines=2500)  # more than one insert chunk
    assert [line.custom_id for line in store.queued_lines(batch_id, skip=set(), limit=3000)] == [
        f"c{i}" for i in range(2500)]
    store.start(batch_id, [("x", {})], 2000)  # validation run again after a crash: no line twice
    assert [line.custom_id for line in store.queued_lines(batch_id, skip=set(), limit=3000)] == ["x"]


def test_the_worker_deletes_expired_files_from_disk(tmp_path: Path) -> None:
    store = make_store(tmp_path, retention_s=DAY)
    storage = FileStorage(tmp_path / "files")
    file_id = new_file_id()
    storage.write_lines(file_id, ["{}"])
    store.add_file(file_id, "alice", "in.jsonl", "batch", 3, 1000)
    services = cast(Services, SimpleNamespace(settings=Settings(), draining=False))
    now = [1000.0 + DAY - 1]
    worker = BatchWorker(store, storage, services, clock=lambda: now[0])
    asyncio.run(worker.step())
    assert storage.path(file_id).exists() and store.get_file(file_id, "alice") is not None
    now[0] = 1000.0 + DAY + PURGE_EVERY_S  # expired, and the hourly purge is due again
    asyncio.run(worker.step())
    assert not storage.path(file_id).exists() and store.get_file(file_id, "alice") is None
