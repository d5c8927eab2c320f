"""The webhook outbox and its per-URL deliveries (agents/webhooks.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from runtime import clock

from .db import Database


def delete_webhook_events(db: sqlite3.Connection, event_ids: Sequence[str]) -> int:
    """Delete these webhook events and their deliveries, in the caller's transaction."""
    for event_id in event_ids:
        db.execute("DELETE FROM webhook_deliveries WHERE event_id = ?", (event_id,))
        db.execute("DELETE FROM webhook_outbox WHERE event_id = ?", (event_id,))
    return len(event_ids)


class WebhookOutbox(Database):
    """`webhook_outbox` and `webhook_deliveries`."""

    @staticmethod
    def insert_webhook_event(
        db: sqlite3.Connection, event_id: str, kind: str, created: int, body: bytes
    ) -> bool:
        """Queue an event in the caller's transaction; False if its id was already queued."""
        cursor = db.execute(
            "INSERT INTO webhook_outbox (event_id, type, created, body, state)"
            " VALUES (?, ?, ?, ?, 'queued') ON CONFLICT (event_id) DO NOTHING",
            (event_id, kind, created, body),
        )
        return cursor.rowcount == 1

    def webhook_backlog(self) -> tuple[int, int | None]:
        """How many events are queued (not yet taken by every receiver) and when the oldest
        was created (None when none is): `nrm_webhook_backlog` (agents/metrics.py)."""
        n, oldest = self._db.execute(
            "SELECT count(*), min(created) FROM webhook_outbox WHERE state = 'queued'"
        ).fetchone()
        return int(n), None if oldest is None else int(oldest)

    def webhook_pending(self, url: str, limit: int) -> list[tuple[str, str, bytes]]:
        """(event id, type, body) of events `url` has not taken yet, oldest first."""
        rows = self._db.execute(
            "SELECT o.event_id, o.type, o.body FROM webhook_outbox o"
            " WHERE o.state = 'queued' AND NOT EXISTS ("
            "   SELECT 1 FROM webhook_deliveries d"
            "   WHERE d.event_id = o.event_id AND d.url = ? AND d.delivered_at IS NOT NULL)"
            " ORDER BY o.seq LIMIT ?",
            (url, limit),
        ).fetchall()
        return [(str(e), str(k), bytes(b)) for e, k, b in rows]

    def webhook_attempt(self, event_id: str, url: str, status: int | None) -> None:
        with self.transaction() as db:
            # An erasure or the retention purge may have deleted the event meanwhile: then
            # nothing is recorded (the SELECT yields no row), never a foreign-key failure.
            db.execute(
                "INSERT INTO webhook_deliveries (event_id, url, attempts, last_status)"
                " SELECT ?, ?, 1, ? WHERE EXISTS"
                " (SELECT 1 FROM webhook_outbox WHERE event_id = ?) ON CONFLICT (event_id, url)"
                " DO UPDATE SET attempts = attempts + 1, last_status = excluded.last_status",
                (event_id, url, status, event_id),
            )

    def webhook_delivered(self, event_id: str, url: str, status: int, urls: Sequence[str]) -> None:
        """`url` took the event; once every one of `urls` has, it leaves the queue."""
        now = clock.now()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO webhook_deliveries"
                " (event_id, url, attempts, last_status, delivered_at) SELECT ?, ?, 1, ?, ?"
                " WHERE EXISTS (SELECT 1 FROM webhook_outbox WHERE event_id = ?)"
                " ON CONFLICT (event_id, url) DO UPDATE"
                " SET attempts = attempts + 1, last_status = excluded.last_status,"
                " delivered_at = excluded.delivered_at WHERE delivered_at IS NULL",
                (event_id, url, status, now, event_id),
            )
            marks = ",".join("?" * len(urls))
            # Only placeholders are interpolated; every value is a bound parameter.
            query = (
                "SELECT count(*) FROM webhook_deliveries WHERE event_id = ?"  # noqa: S608
                f" AND delivered_at IS NOT NULL AND url IN ({marks})"
            )
            (taken,) = db.execute(query, (event_id, *urls)).fetchone()
            if taken == len(urls):
                db.execute(
                    "UPDATE webhook_outbox SET state = 'delivered', delivered_at = ?"
                    " WHERE event_id = ? AND state = 'queued'",
                    (now, event_id),
                )
