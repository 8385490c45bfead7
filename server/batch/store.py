"""Batch and file state in the shared state database (component ``batch``).

A line's result is written in the same transaction that marks it done and counts it, so a crash at any point
leaves each line either done once (its result kept) or queued (run again after the restart): the output files,
built from this table when the batch finalizes, can neither lose a line nor hold one twice.
Every read and write takes the owner (the API key's name), so one key never sees another's files or batches.
Calls are synchronous and short; the async layers run them in a thread.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from server.batch.protocol import (
    COMPLETION_WINDOW_S,
    FINAL_STATUSES,
    Batch,
    BatchError,
    BatchErrors,
    BatchRequestCounts,
    CreateBatchRequest,
    FileObject,
)
from server.state import StateDB

COMPONENT = "batch"
MIGRATIONS: list[str] = [
    """
    CREATE TABLE batch_files (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
        bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER
    );
    CREATE INDEX batch_files_owner ON batch_files (owner);
    CREATE TABLE batches (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL,
        completion_window TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL,
        in_progress_at INTEGER, expires_at INTEGER, finalizing_at INTEGER, completed_at INTEGER,
        failed_at INTEGER, expired_at INTEGER, cancelling_at INTEGER, cancelled_at INTEGER,
        output_file_id TEXT, error_file_id TEXT, errors TEXT, metadata TEXT,
        total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX batches_owner ON batches (owner);
    CREATE INDEX batches_status ON batches (status);
    CREATE TABLE batch_lines (
        batch_id TEXT NOT NULL, line INTEGER NOT NULL, custom_id TEXT NOT NULL, body TEXT,
        done INTEGER NOT NULL DEFAULT 0, status_code INTEGER, result TEXT,
        PRIMARY KEY (batch_id, line)
    );
    CREATE INDEX batch_lines_queued ON batch_lines (batch_id, done, line)
    """,
    # One worker per state database: several processes on one state volume must not run the same lines.
    """
    CREATE TABLE batch_worker_lease (
        id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL, expires_at REAL NOT NULL
    )
    """,
]
_INSERT_CHUNK = 1000
_TIMES = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")
_STATUS_TIME = {"in_progress": "in_progress_at", "finalizing": "finalizing_at", "completed": "completed_at",
                "failed": "failed_at", "expired": "expired_at", "cancelling": "cancelling_at",
                "cancelled": "cancelled_at"}


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class QueuedLine:
    line: int
    custom_id: str
    body: dict[str, Any]


class BatchStore:
    def __init__(self, db: StateDB, *, retention_s: float) -> None:
        self.db = db
        self.retention_s = retention_s
        db.migrate(COMPONENT, MIGRATIONS)

    # -- files ----------------------------------------------------------------------------------------

    def add_file(self, file_id: str, owner: str, filename: str, purpose: str, size: int, now: int) -> FileObject:
        expires = now + int(self.retention_s)
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO batch_files (id, owner, filename, purpose, bytes, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (file_id, owner, filename, purpose, size, now, expires))
        return FileObject(id=file_id, bytes=size, created_at=now, filename=filename, purpose=purpose,
                          expires_at=expires)

    def get_file(self, file_id: str, owner: str) -> FileObject | None:
        rows = self.db.query("SELECT * FROM batch_files WHERE id = ? AND owner = ?", (file_id, owner))
        return _file(rows[0]) if rows else None

    def get_file_any(self, file_id: str) -> FileObject | None:
        """A file whatever its owner: for the worker, which reads a batch's input file."""
        rows = self.db.query("SELECT * FROM batch_files WHERE id = ?", (file_id,))
        return _file(rows[0]) if rows else None

    def list_files(self, owner: str, *, purpose: str | None, after: str | None, limit: int,
                   ascending: bool) -> tuple[list[FileObject], bool]:
        clause, params = "owner = ?", [owner]
        if purpose:
            clause += " AND purpose = ?"
            params.append(purpose)
        rows = self._page("batch_files", clause, params, after, limit, ascending)
        return [_file(row) for row in rows[:limit]], len(rows) > limit

    def delete_file(self, file_id: str, owner: str) -> bool:
        with self.db.transaction() as conn:
            return conn.execute("DELETE FROM batch_files WHERE id = ? AND owner = ?", (file_id, owner)).rowcount > 0

    def disk_bytes(self) -> int:
        return int(self.db.query("SELECT COALESCE(SUM(bytes), 0) AS n FROM batch_files")[0]["n"])

    def file_ids(self) -> set[str]:
        return {row["id"] for row in self.db.query("SELECT id FROM batch_files")}

    # -- batches --------------------------------------------------------------------------------------

    def create_batch(self, owner: str, request: CreateBatchRequest, now: int) -> Batch:
        batch_id = new_batch_id()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO batches (id, owner, endpoint, input_file_id, completion_window, status, created_at, "
                "expires_at, metadata) VALUES (?, ?, ?, ?, ?, 'validating', ?, ?, ?)",
                (batch_id, owner, request.endpoint, request.input_file_id, request.completion_window, now,
                 now + COMPLETION_WINDOW_S, json.dumps(request.metadata) if request.metadata is not None else None))
        batch = self.get_batch(batch_id, owner)
        assert batch is not None
        return batch

    def get_batch(self, batch_id: str, owner: str | None = None) -> Batch | None:
        if owner is None:
            rows = self.db.query("SELECT * FROM batches WHERE id = ?", (batch_id,))
        else:
            rows = self.db.query("SELECT * FROM batches WHERE id = ? AND owner = ?", (batch_id, owner))
        return _batch(rows[0]) if rows else None

    def list_batches(self, owner: str | None, *, after: str | None, limit: int) -> tuple[list[Batch], bool]:
        clause, params = ("owner = ?", [owner]) if owner is not None else ("1 = 1", [])
        rows = self._page("batches", clause, params, after, limit, ascending=False)
        return [_batch(row) for row in rows[:limit]], len(rows) > limit

    def owner_of(self, batch_id: str) -> str:
        rows = self.db.query("SELECT owner FROM batches WHERE id = ?", (batch_id,))
        return str(rows[0]["owner"]) if rows else ""

    def active_batches(self) -> list[Batch]:
        marks = ",".join("?" * len(FINAL_STATUSES))
        rows = self.db.query(f"SELECT * FROM batches WHERE status NOT IN ({marks}) ORDER BY rowid",
                             tuple(FINAL_STATUSES))
        return [_batch(row) for row in rows]

    def request_cancel(self, batch_id: str, owner: str, now: int) -> Batch | None:
        """validating / in_progress -> cancelling; any other status is left as it is (the caller says why)."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE batches SET status = 'cancelling', cancelling_at = ? "
                         "WHERE id = ? AND owner = ? AND status IN ('validating', 'in_progress')",
                         (now, batch_id, owner))
        return self.get_batch(batch_id, owner)

    def start(self, batch_id: str, lines: Sequence[tuple[str, dict[str, Any]]], now: int) -> None:
        """Store the validated lines and move validating -> in_progress (a batch cancelled meanwhile stays so).

        The lines go in in chunks, so a 50,000-line file never holds the database's write lock for long (the
        spend ledger writes there too); the status moves last, so a crash midway leaves the batch validating,
        and validating again starts from no lines."""
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch_id,))  # a restart mid-validation
        for first in range(0, len(lines), _INSERT_CHUNK):
            with self.db.transaction() as conn:
                conn.executemany(
                    "INSERT INTO batch_lines (batch_id, line, custom_id, body) VALUES (?, ?, ?, ?)",
                    ((batch_id, first + offset, custom_id, json.dumps(body))
                     for offset, (custom_id, body) in enumerate(lines[first:first + _INSERT_CHUNK])))
        with self.db.transaction() as conn:
            conn.execute("UPDATE batches SET total = ? WHERE id = ?", (len(lines), batch_id))
            conn.execute("UPDATE batches SET status = 'in_progress', in_progress_at = ? "
                         "WHERE id = ? AND status = 'validating'", (now, batch_id))

    def fail(self, batch_id: str, errors: list[BatchError], now: int) -> None:
        payload = BatchErrors(data=errors).model_dump_json()
        with self.db.transaction() as conn:
            conn.execute("UPDATE batches SET status = 'failed', failed_at = ?, errors = ? WHERE id = ?",
                         (now, payload, batch_id))

    def set_status(self, batch_id: str, status: str, now: int, *, only_from: Sequence[str]) -> bool:
        column = _STATUS_TIME[status]
        marks = ",".join("?" * len(only_from))
        with self.db.transaction() as conn:
            cursor = conn.execute(
                f"UPDATE batches SET status = ?, {column} = ? WHERE id = ? AND status IN ({marks})",
                (status, now, batch_id, *only_from))
            return cursor.rowcount > 0

    # -- lines ----------------------------------------------------------------------------------------

    def queued_lines(self, batch_id: str, *, skip: set[int], limit: int) -> list[QueuedLine]:
        rows = self.db.query("SELECT line, custom_id, body FROM batch_lines WHERE batch_id = ? AND done = 0 "
                             "ORDER BY line LIMIT ?", (batch_id, limit + len(skip)))
        found = [QueuedLine(row["line"], row["custom_id"], json.loads(row["body"]))
                 for row in rows if row["line"] not in skip]
        return found[:limit]

    def queued_count(self) -> int:
        return int(self.db.query(
            "SELECT COUNT(*) AS n FROM batch_lines JOIN batches ON batches.id = batch_lines.batch_id "
            "WHERE batch_lines.done = 0 AND batches.status = 'in_progress'")[0]["n"])

    def record(self, batch_id: str, line: int, status_code: int, result: dict[str, Any]) -> bool:
        """Mark a line done with its output line, and count it, at once. False: it was already done."""
        column = "completed" if 200 <= status_code < 300 else "failed"
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE batch_lines SET done = 1, status_code = ?, result = ?, body = NULL "
                "WHERE batch_id = ? AND line = ? AND done = 0",
                (status_code, json.dumps(result, separators=(",", ":")), batch_id, line))
            if cursor.rowcount == 0:
                return False
            conn.execute(f"UPDATE batches SET {column} = {column} + 1 WHERE id = ?", (batch_id,))
            return True

    def results(self, batch_id: str, *, ok: bool) -> Iterator[str]:
        """The done lines' output lines in input order: the successes, or the failures."""
        test = "status_code BETWEEN 200 AND 299" if ok else "NOT (status_code BETWEEN 200 AND 299)"
        last = -1
        while True:  # in pages, so a 50,000-line batch is never all in memory
            rows = self.db.query(f"SELECT line, result FROM batch_lines WHERE batch_id = ? AND done = 1 AND {test} "
                                 "AND line > ? ORDER BY line LIMIT 1000", (batch_id, last))
            if not rows:
                return
            for row in rows:
                yield row["result"]
            last = rows[-1]["line"]

    def undone(self, batch_id: str) -> list[tuple[int, str]]:
        rows = self.db.query("SELECT line, custom_id FROM batch_lines WHERE batch_id = ? AND done = 0 ORDER BY line",
                             (batch_id,))
        return [(row["line"], row["custom_id"]) for row in rows]

    def finish(self, batch_id: str, status: str, now: int, files: Sequence[tuple[str, str, str, int]],
               owner: str) -> None:
        """The output/error files' rows and the final status, in one transaction. files: (kind, id, name, bytes)."""
        expires = now + int(self.retention_s)
        with self.db.transaction() as conn:
            for kind, file_id, name, size in files:
                conn.execute(
                    "INSERT INTO batch_files (id, owner, filename, purpose, bytes, created_at, expires_at) "
                    "VALUES (?, ?, ?, 'batch_output', ?, ?, ?)", (file_id, owner, name, size, now, expires))
                conn.execute(f"UPDATE batches SET {kind}_file_id = ? WHERE id = ?", (file_id, batch_id))
            conn.execute(f"UPDATE batches SET status = ?, {_STATUS_TIME[status]} = ? WHERE id = ?",
                         (status, now, batch_id))

    # -- the worker lease -----------------------------------------------------------------------------

    def claim(self, holder: str, now: float, ttl_s: float, alive: Callable[[str], bool]) -> bool:
        """Take or renew the worker lease: free, ours, expired, or held by a process known to be gone."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT holder, expires_at FROM batch_worker_lease WHERE id = 1").fetchone()
            if row is not None and row["holder"] != holder and row["expires_at"] > now and alive(row["holder"]):
                return False
            conn.execute("INSERT INTO batch_worker_lease (id, holder, expires_at) VALUES (1, ?, ?) "
                         "ON CONFLICT(id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                         (holder, now + ttl_s))
            return True

    def release(self, holder: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM batch_worker_lease WHERE id = 1 AND holder = ?", (holder,))

    # -- retention ------------------------------------------------------------------------------------

    def purge(self, now: int) -> list[str]:
        """Delete expired files and batches finished longer than the retention ago; the deleted files' ids."""
        cutoff = now - int(self.retention_s)
        finals = ",".join("?" * len(FINAL_STATUSES))
        with self.db.transaction() as conn:
            ids = [row["id"] for row in conn.execute(
                "SELECT id FROM batch_files WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))]
            conn.execute("DELETE FROM batch_files WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
            old = [row["id"] for row in conn.execute(
                f"SELECT id FROM batches WHERE status IN ({finals}) AND "
                "MAX(COALESCE(completed_at, 0), COALESCE(failed_at, 0), COALESCE(expired_at, 0), "
                "COALESCE(cancelled_at, 0)) <= ?", (*FINAL_STATUSES, cutoff))]
            for batch_id in old:
                conn.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch_id,))
                conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
        return ids

    # -- helpers --------------------------------------------------------------------------------------

    def _page(self, table: str, clause: str, params: list[Any], after: str | None, limit: int,
              ascending: bool) -> list[sqlite3.Row]:
        order = "ASC" if ascending else "DESC"
        if after:
            cursor = self.db.query(f"SELECT rowid FROM {table} WHERE id = ? AND {clause}", (after, *params))
            if cursor:
                clause += f" AND rowid {'>' if ascending else '<'} ?"
                params = [*params, cursor[0]["rowid"]]
        return self.db.query(f"SELECT * FROM {table} WHERE {clause} ORDER BY rowid {order} LIMIT ?",
                             (*params, limit + 1))


def _file(row: sqlite3.Row) -> FileObject:
    return FileObject(id=row["id"], bytes=row["bytes"], created_at=row["created_at"], filename=row["filename"],
                      purpose=row["purpose"], expires_at=row["expires_at"])


def _batch(row: sqlite3.Row) -> Batch:
    return Batch(
        id=row["id"], endpoint=row["endpoint"], input_file_id=row["input_file_id"],
        completion_window=row["completion_window"], status=row["status"], created_at=row["created_at"],
        expires_at=row["expires_at"], output_file_id=row["output_file_id"], error_file_id=row["error_file_id"],
        errors=BatchErrors.model_validate_json(row["errors"]) if row["errors"] else None,
        metadata=json.loads(row["metadata"]) if row["metadata"] else None,
        request_counts=BatchRequestCounts(total=row["total"], completed=row["completed"], failed=row["failed"]),
        **{name: row[name] for name in _TIMES},
    )
