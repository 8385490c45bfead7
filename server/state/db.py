"""One embedded SQLite database (``state.db`` under ``MSSERVE_STATE_DIR``) that several components share.

Each component (the Azure spend ledger, the router's outcomes, batches) owns its own tables and migrates them
forward with its own numbered list of SQL scripts; the versions live in ``schema_versions``. WAL mode with
``synchronous=FULL``: a committed transaction survives the process being killed and the machine losing power.
Calls are short and synchronous; async callers run them in a thread (``asyncio.to_thread``) when they sit on a
hot path.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

DB_FILE = "state.db"
# Writers wait this long for another writer's lock (another process on the same volume) before failing.
_BUSY_TIMEOUT_MS = 5000


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/msserve``, else ``~/.local/state/msserve``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "msserve"


class StateDB:
    """A thread-safe handle on the state database: one connection, serialised by a lock."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_FILE
        self._lock = threading.RLock()
        # isolation_level=None: autocommit, so transactions are explicit (BEGIN IMMEDIATE in ``transaction``).
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at its start (BEGIN IMMEDIATE): read-then-write inside it is atomic."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def version(self, component: str) -> int:
        rows = self.query("SELECT version FROM schema_versions WHERE component = ?", (component,))
        return int(rows[0]["version"]) if rows else 0

    def migrate(self, component: str, migrations: Sequence[str]) -> int:
        """Apply ``migrations[v:]`` where ``v`` is the component's stored version; returns the new version.

        A database written by a newer release (version above ``len(migrations)``) is refused rather than guessed at.
        """
        with self.transaction() as conn:
            row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
            current = int(row["version"]) if row else 0
            if current > len(migrations):
                raise RuntimeError(
                    f"{self.path}: {component} schema version {current} is newer than this release knows "
                    f"({len(migrations)}); upgrade msserve or point MSSERVE_STATE_DIR elsewhere"
                )
            for script in migrations[current:]:
                for statement in (s.strip() for s in script.split(";")):
                    if statement:
                        conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                (component, len(migrations)),
            )
        return len(migrations)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
