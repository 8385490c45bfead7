"""The Azure spend ledger in the shared SQLite state database: the one-box ``SpendLedger`` (``server.routing.ledger``
says what the protocol promises; ``open_spend_ledger`` picks this one when no Redis is configured)."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from datetime import date

from server.routing.ledger import (
    BudgetRefused,
    LedgerUnavailable,
    Purpose,
    QueuedLedger,
    Reservation,
    SpendSnapshot,
    refusal,
    utc_today,
)
from server.state import StateDB

log = logging.getLogger(__name__)

COMPONENT = "azure_spend"
MIGRATIONS = [
    # Settled spend per UTC day and purpose; open reservations are rows of their own until settled.
    """
    CREATE TABLE azure_spend_days (
        day TEXT NOT NULL, purpose TEXT NOT NULL,
        settled_usd REAL NOT NULL DEFAULT 0, calls INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, purpose));
    CREATE TABLE azure_spend_open (
        id TEXT PRIMARY KEY, day TEXT NOT NULL, purpose TEXT NOT NULL,
        reserved_usd REAL NOT NULL, owner TEXT NOT NULL, created_at REAL NOT NULL);
    CREATE INDEX azure_spend_open_day ON azure_spend_open (day)
    """,
]



class SQLiteSpendLedger(QueuedLedger):
    """The ledger in the shared SQLite state database; one writer thread keeps the writes off the event loop."""

    def __init__(
        self,
        db: StateDB,
        *,
        daily_usd: float | None,
        shadow_share: float = 0.1,
        today: Callable[[], date] = utc_today,
    ) -> None:
        # One thread: writes happen in the order they were asked for.
        super().__init__(daily_usd=daily_usd, shadow_share=shadow_share, today=today, workers=1, name="spend-ledger")
        self.db = db
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        db.migrate(COMPONENT, MIGRATIONS)
        self._settle_orphans()

    # -- on the writer thread ------------------------------------------------------------------------------------
    def _reserve(self, usd: float, purpose: Purpose) -> Reservation:
        day = self._today().isoformat()
        try:
            with self.db.transaction() as conn:
                snapshot = self._totals(conn, day)
                self._check(snapshot, usd, purpose)
                reservation = Reservation(id=uuid.uuid4().hex, day=day, purpose=purpose, usd=usd)
                conn.execute(
                    "INSERT INTO azure_spend_open (id, day, purpose, reserved_usd, owner, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (reservation.id, day, purpose, usd, self._owner, time.time()),
                )
        except BudgetRefused:
            self._snapshot = snapshot
            raise
        except Exception as exc:  # sqlite3 errors, a full disk, a locked database past the busy timeout
            log.error("Azure spend ledger unavailable: %s", exc)
            raise LedgerUnavailable(f"the Azure spend ledger is unavailable ({type(exc).__name__})") from exc
        self._opened(reservation)
        by_purpose = dict(snapshot.by_purpose)
        by_purpose[purpose] = by_purpose.get(purpose, 0.0) + usd
        self._snapshot = snapshot.model_copy(
            update={"reserved_usd": snapshot.reserved_usd + usd, "by_purpose": by_purpose}
        )
        return reservation

    def _check(self, snapshot: SpendSnapshot, usd: float, purpose: Purpose) -> None:
        refused = refusal(snapshot, usd, purpose, self.daily_usd, self.shadow_share)
        if refused is not None:
            raise refused

    def _close(self, reservation: Reservation, usd: float | None) -> None:
        """Settle (``usd``) or release (None) one reservation; also when a start-up sweep settled it already."""
        try:
            with self.db.transaction() as conn:
                gone = conn.execute("DELETE FROM azure_spend_open WHERE id = ?", (reservation.id,)).rowcount == 0
                # Swept by another process's start-up: it counted the reserved amount and the call; correct it.
                delta = (usd or 0.0) - reservation.usd if gone else (usd or 0.0)
                calls = 0 if gone or usd is None else 1
                if delta or calls:
                    conn.execute(
                        "INSERT INTO azure_spend_days (day, purpose, settled_usd, calls) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT(day, purpose) DO UPDATE SET settled_usd = settled_usd + excluded.settled_usd, "
                        "calls = calls + excluded.calls",
                        (reservation.day, reservation.purpose, delta, calls),
                    )
            self._refresh()
        except Exception:
            # The open row stays: it counts at its reserved amount and the next start-up settles it there.
            log.exception("could not settle Azure spend reservation %s", reservation.id)

    def _refresh(self) -> SpendSnapshot:
        with self.db.transaction() as conn:
            self._snapshot = self._totals(conn, self._today().isoformat())
        return self._snapshot

    def _totals(self, conn: sqlite3.Connection, day: str) -> SpendSnapshot:
        snapshot = SpendSnapshot(day=day, daily_usd=self.daily_usd)
        by_purpose: dict[str, float] = {}
        for row in conn.execute("SELECT purpose, settled_usd FROM azure_spend_days WHERE day = ?", (day,)):
            snapshot.settled_usd += row["settled_usd"]
            by_purpose[row["purpose"]] = by_purpose.get(row["purpose"], 0.0) + row["settled_usd"]
        for row in conn.execute(
            "SELECT purpose, SUM(reserved_usd) AS held FROM azure_spend_open WHERE day = ? GROUP BY purpose", (day,)
        ):
            snapshot.reserved_usd += row["held"]
            by_purpose[row["purpose"]] = by_purpose.get(row["purpose"], 0.0) + row["held"]
        snapshot.by_purpose = by_purpose
        return snapshot

    def _settle_orphans(self) -> None:
        """Settle, at their reserved amount, the reservations a process that ended without settling left open."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT id, day, purpose, reserved_usd FROM azure_spend_open WHERE owner != ?", (self._owner,)
            ).fetchall()
            for row in rows:
                conn.execute("DELETE FROM azure_spend_open WHERE id = ?", (row["id"],))
                conn.execute(
                    "INSERT INTO azure_spend_days (day, purpose, settled_usd, calls) VALUES (?, ?, ?, 1) "
                    "ON CONFLICT(day, purpose) DO UPDATE SET settled_usd = settled_usd + excluded.settled_usd, "
                    "calls = calls + 1",
                    (row["day"], row["purpose"], row["reserved_usd"]),
                )
        if rows:
            log.warning(
                "settled %d Azure spend reservation(s) ($%.4f) left open by a process that ended without settling "
                "them, at their reserved amount: the real cost is unknown, so the day's spend may be overstated",
                len(rows),
                sum(row["reserved_usd"] for row in rows),
            )
        self._refresh()
