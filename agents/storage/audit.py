"""The audit outbox, ledger restores and ledger alerts (agents/audit.py, ledger_check.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from runtime import clock

from .db import Database


class AuditLog(Database):
    """Signed audit events until the ledger proves them included; alerts about the ledger."""

    @staticmethod
    def record_audit(db: sqlite3.Connection, event_id: str, event: bytes, created: int) -> None:
        """Queue a signed audit event in the caller's transaction (it commits with the
        action it describes, or not at all)."""
        db.execute(
            "INSERT INTO audit_outbox (event_id, event, created, state) VALUES (?, ?, ?, 'queued')",
            (event_id, event, created),
        )

    def pending_audit(self, limit: int) -> list[tuple[str, bytes]]:
        rows = self._db.execute(
            "SELECT event_id, event FROM audit_outbox WHERE state = 'queued'"
            " AND state != 'included' ORDER BY seq LIMIT ?",  # the term lets audit_unfinished serve
            (limit,),
        ).fetchall()
        return [(str(r[0]), bytes(r[1])) for r in rows]

    def mark_audit_sent_many(self, sent: Sequence[tuple[str, int]]) -> None:
        """`mark_audit_sent` for several (event_id, stream_seq) in one transaction."""
        self._execute_each(
            "UPDATE audit_outbox SET state = 'sent', stream_seq = ? "
            "WHERE event_id = ? AND state = 'queued'",
            [(seq, event_id) for event_id, seq in sent],
        )

    def unconfirmed_audit(self, limit: int) -> list[tuple[str, bytes, int]]:
        """Events published but not yet proven included in the ledger: (id, event, created)."""
        rows = self._db.execute(
            "SELECT event_id, event, created FROM audit_outbox WHERE state = 'sent' "
            "AND state != 'included' AND event_id NOT IN (SELECT event_id FROM ledger_alerts"
            " WHERE acknowledged_at IS NOT NULL AND event_id IS NOT NULL)"  # given up on
            " ORDER BY seq LIMIT ?",  # uses audit_unfinished
            (limit,),
        ).fetchall()
        return [(str(r[0]), bytes(r[1]), int(r[2])) for r in rows]

    def mark_audit_included(self, included: Sequence[tuple[str, int]]) -> None:
        """Record (event id, ledger index) pairs whose inclusion was verified."""
        self._execute_each(
            "UPDATE audit_outbox SET state = 'included', ledger_index = ? WHERE event_id = ?",
            [(index, event_id) for event_id, index in included],
        )

    def reoffer_audit_after_restore(self, *, seq: int, restored_size: int) -> int | None:
        """Accept ledger restore `seq` (PROTOCOL.md §9.4) once: queue again for publishing
        every event not proven to be in the restored tree (included at an index at or past
        `restored_size`, or published and not yet proven). Returns how many, or None if this
        restore was already accepted."""
        with self.transaction() as tx:
            seen = tx.execute("SELECT 1 FROM ledger_restores WHERE seq = ?", (seq,)).fetchone()
            if seen is not None:
                return None
            tx.execute(
                "INSERT OR REPLACE INTO audit_reoffers (event_id, seq) SELECT event_id, ?"
                " FROM audit_outbox WHERE state = 'sent' OR"
                " (state = 'included' AND ledger_index >= ?)",
                (seq, restored_size),
            )
            count = tx.execute(
                "UPDATE audit_outbox SET state = 'queued', stream_seq = NULL, ledger_index = NULL"
                " WHERE state = 'sent' OR (state = 'included' AND ledger_index >= ?)",
                (restored_size,),
            ).rowcount
            tx.execute(
                "INSERT INTO ledger_restores (seq, restored_size, applied_at) VALUES (?, ?, ?)",
                (seq, restored_size, clock.now()),
            )
        return int(count)

    def reoffered(self, event_ids: Sequence[str]) -> dict[str, int]:
        """event id -> restore seq, for those of `event_ids` re-offered after a restore (they
        are published under another `Nats-Msg-Id`, PROTOCOL.md §9.4)."""
        if not event_ids:
            return {}
        marks = ",".join("?" * len(event_ids))  # a publish batch: Limits.batch_size ids
        rows = self._db.execute(
            f"SELECT event_id, seq FROM audit_reoffers WHERE event_id IN ({marks})",  # noqa: S608
            tuple(event_ids),
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def ledger_restores_applied(self) -> dict[int, int]:
        """seq -> time this agent accepted it, of every ledger restore it accepted."""
        rows = self._db.execute("SELECT seq, applied_at FROM ledger_restores")
        return {int(r[0]): int(r[1]) for r in rows}

    def last_audit_event(self) -> bytes | None:
        """The newest signed audit event (it names the agency the database belongs to)."""
        row = self._db.execute("SELECT event FROM audit_outbox ORDER BY seq DESC LIMIT 1")
        found = row.fetchone()
        return None if found is None else bytes(found[0])

    # --- ledger alerts (agents/ledger_check.py) -------------------------------------------

    def raise_alert(self, reason: str, event_id: str | None) -> bool:
        """Record an alert; an open one of the same reason (and event) counts one more
        occurrence instead. True if it is new."""
        now = clock.now()
        with self.transaction() as tx:
            updated = tx.execute(
                "UPDATE ledger_alerts SET occurrences = occurrences + 1, last_at = ?"
                " WHERE reason = ? AND coalesce(event_id, '') = coalesce(?, '')"
                " AND acknowledged_at IS NULL",
                (now, reason, event_id),
            ).rowcount
            if updated:
                return False
            tx.execute(
                "INSERT INTO ledger_alerts (reason, event_id, first_at, last_at)"
                " VALUES (?, ?, ?, ?)",
                (reason, event_id, now, now),
            )
        return True

    def alerted(self, event_id: str) -> bool:
        """Whether an alert about `event_id` was raised, open or acknowledged."""
        row = self._db.execute(
            "SELECT 1 FROM ledger_alerts WHERE event_id = ? LIMIT 1", (event_id,)
        ).fetchone()
        return row is not None

    def alerts(self, *, open_only: bool = False) -> list[tuple[Any, ...]]:
        """(seq, reason, event_id, first_at, last_at, occurrences, acknowledged_at) rows."""
        return self._db.execute(
            "SELECT seq, reason, event_id, first_at, last_at, occurrences, acknowledged_at"
            " FROM ledger_alerts WHERE acknowledged_at IS NULL OR NOT ? ORDER BY seq",
            (open_only,),
        ).fetchall()

    def open_alerts(self) -> tuple[int, str | None]:
        """How many alerts are not acknowledged, and the reason of the latest of them."""
        row = self._db.execute(
            "SELECT count(*), (SELECT reason FROM ledger_alerts WHERE acknowledged_at IS NULL"
            " ORDER BY last_at DESC, seq DESC LIMIT 1)"
            " FROM ledger_alerts WHERE acknowledged_at IS NULL"
        ).fetchone()
        return int(row[0]), row[1]

    @staticmethod
    def acknowledge_alerts(
        db: sqlite3.Connection, *, reason: str, event_ids: Sequence[str] = ()
    ) -> int:
        """Acknowledge the open alerts of `reason` (only those about `event_ids` if given),
        in the caller's transaction; how many."""
        now = clock.now()
        if not event_ids:
            return db.execute(
                "UPDATE ledger_alerts SET acknowledged_at = ?"
                " WHERE reason = ? AND acknowledged_at IS NULL",
                (now, reason),
            ).rowcount
        return sum(
            db.execute(
                "UPDATE ledger_alerts SET acknowledged_at = ?"
                " WHERE reason = ? AND event_id = ? AND acknowledged_at IS NULL",
                (now, reason, event_id),
            ).rowcount
            for event_id in event_ids
        )
