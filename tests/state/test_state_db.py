"""The shared state database: migrations run forward once, survive reopening, and refuse a newer schema."""

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from server.state import StateDB

MIGRATIONS = [
    "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
    "ALTER TABLE things ADD COLUMN size INTEGER NOT NULL DEFAULT 0",
]


def test_migrations_apply_in_order_and_only_once(tmp_path: Path) -> None:
    db = StateDB(tmp_path)
    assert db.version("things") == 0
    assert db.migrate("things", MIGRATIONS[:1]) == 1
    with db.transaction() as conn:
        conn.execute("INSERT INTO things (name) VALUES ('a')")
    assert db.migrate("things", MIGRATIONS) == 2  # only the second script runs: the row is kept
    assert [tuple(r) for r in db.query("SELECT name, size FROM things")] == [("a", 0)]
    db.close()
    reopened = StateDB(tmp_path)
    assert reopened.version("things") == 2
    assert reopened.query("PRAGMA journal_mode")[0][0] == "wal"


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    StateDB(tmp_path).migrate("things", MIGRATIONS)
    with pytest.raises(RuntimeError, match="newer than this release"):
        StateDB(tmp_path).migrate("things", MIGRATIONS[:1])


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    db = StateDB(tmp_path)
    db.migrate("things", MIGRATIONS)
    with pytest.raises(sqlite3.IntegrityError), db.transaction() as conn:
        conn.execute("INSERT INTO things (name) VALUES ('kept-out')")
        conn.execute("INSERT INTO things (name) VALUES (NULL)")
    assert db.query("SELECT count(*) FROM things")[0][0] == 0


def _write_and_die(directory: str) -> None:
    db = StateDB(Path(directory))
    with db.transaction() as conn:
        conn.execute("INSERT INTO things (name) VALUES ('committed')")
    import os

    os._exit(9)  # no close, no checkpoint: as a kill -9 would leave it


def test_a_committed_row_survives_a_killed_process(tmp_path: Path) -> None:
    StateDB(tmp_path).migrate("things", MIGRATIONS)
    child = multiprocessing.get_context("spawn").Process(target=_write_and_die, args=(str(tmp_path),))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    assert [r["name"] for r in StateDB(tmp_path).query("SELECT name FROM things")] == ["committed"]
