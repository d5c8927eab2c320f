"""SQL of retention (docs/DESIGN.md "Retention"): legal holds and the batched purge.

Every purge function deletes (or drops) at most `batch` rows older than `cutoff` and
returns how many, leaving alone whatever belongs to a referral under legal hold. Where a
query would match on the referral's owning agency it matches on the referral id (and the
counterpart) today, marked `# owner:`.
"""

from __future__ import annotations

import sqlite3

from .erasure import DROPPED

#: Referral states after which nothing more happens (agents.lifecycle.FINAL_STATES).
CLOSED_STATES = ("declined", "closed", "withdrawn", "cancelled", "expired")

SCHEMA = (
    # owner: keyed by (owner, referral_id) once referrals are.
    """CREATE TABLE IF NOT EXISTS legal_holds (
        referral_id TEXT PRIMARY KEY,
        placed_at   INTEGER NOT NULL,
        placed_by   TEXT NOT NULL
    ) STRICT""",
)


def create_tables(db: sqlite3.Connection) -> None:
    for statement in SCHEMA:
        db.execute(statement)


# --- legal holds -------------------------------------------------------------------------


def referral_exists(db: sqlite3.Connection, referral_id: str) -> bool:
    # owner: match (owner, referral_id).
    row = db.execute("SELECT 1 FROM referrals WHERE referral_id = ? LIMIT 1", (referral_id,))
    return row.fetchone() is not None


def place_hold(db: sqlite3.Connection, referral_id: str, *, at: int, by: str) -> bool:
    """Put a referral under legal hold; False if it already was."""
    cursor = db.execute(
        "INSERT INTO legal_holds (referral_id, placed_at, placed_by) VALUES (?, ?, ?)"
        " ON CONFLICT (referral_id) DO NOTHING",
        (referral_id, at, by),
    )
    return cursor.rowcount == 1


def lift_hold(db: sqlite3.Connection, referral_id: str) -> bool:
    """Lift a legal hold; False if there was none."""
    return db.execute("DELETE FROM legal_holds WHERE referral_id = ?", (referral_id,)).rowcount == 1


def hold_of(db: sqlite3.Connection, referral_id: str) -> tuple[int, str] | None:
    """(placed at, by which API client) of the referral's legal hold, if any."""
    row = db.execute(
        "SELECT placed_at, placed_by FROM legal_holds WHERE referral_id = ?", (referral_id,)
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


# --- the purge ---------------------------------------------------------------------------


def purge_envelopes(db: sqlite3.Connection, *, cutoff: int, batch: int) -> int:
    """Drop the envelope of outbox messages every copy of which was delivered (receipted)
    before `cutoff`; hash, kind, times and deliveries stay."""
    return db.execute(
        "UPDATE outbox SET envelope = ? WHERE rowid IN (SELECT o.rowid FROM outbox o"
        " WHERE length(o.envelope) > 0"
        " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = o.message_id)"
        " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = o.message_id"
        "   AND (d.state != 'delivered' OR d.delivered_at IS NULL OR d.delivered_at >= ?))"
        " AND (o.referral_id IS NULL OR o.referral_id NOT IN"
        " (SELECT referral_id FROM legal_holds))"
        " LIMIT ?)",
        (DROPPED, cutoff, batch),
    ).rowcount


def purge_idempotency(db: sqlite3.Connection, *, cutoff: int, batch: int) -> int:
    """Delete idempotency records made before `cutoff` (a retry after that is new work)."""
    return db.execute(
        "DELETE FROM idempotency WHERE rowid IN"
        " (SELECT rowid FROM idempotency WHERE created < ? LIMIT ?)",
        (cutoff, batch),
    ).rowcount


def purge_webhooks(db: sqlite3.Connection, *, cutoff: int, batch: int) -> int:
    """Delete webhook events delivered to every URL before `cutoff`."""
    events = [
        str(r[0])
        for r in db.execute(
            "SELECT event_id FROM webhook_outbox WHERE state = 'delivered' AND delivered_at < ?"
            " AND coalesce(json_extract(CAST(body AS TEXT), '$.data.referral_id'), '')"
            " NOT IN (SELECT referral_id FROM legal_holds) LIMIT ?",
            (cutoff, batch),
        )
    ]
    for event_id in events:
        db.execute("DELETE FROM webhook_deliveries WHERE event_id = ?", (event_id,))
        db.execute("DELETE FROM webhook_outbox WHERE event_id = ?", (event_id,))
    return len(events)


def purge_history(db: sqlite3.Connection, *, cutoff: int, batch: int) -> int:
    """Delete lifecycle history entries made before `cutoff` (the referral's current state
    stays in `referrals`)."""
    return db.execute(
        "DELETE FROM history WHERE seq IN (SELECT seq FROM history WHERE at < ?"
        " AND referral_id NOT IN (SELECT referral_id FROM legal_holds) LIMIT ?)",  # owner:
        (cutoff, batch),
    ).rowcount


def purge_closed(db: sqlite3.Connection, *, cutoff: int, batch: int) -> int:
    """Delete referrals (one row per counterpart) closed, declined, withdrawn, cancelled or
    expired before `cutoff`, with their history; at a recipient also the data key, the
    sealed body and the attachments; at a sender the envelopes are dropped."""
    marks = ",".join("?" * len(CLOSED_STATES))
    rows = db.execute(
        "SELECT referral_id, counterpart, side FROM referrals"  # noqa: S608
        f" WHERE state IN ({marks}) AND updated < ? AND referral_id NOT IN"
        " (SELECT referral_id FROM legal_holds) LIMIT ?",
        (*CLOSED_STATES, cutoff, batch),
    ).fetchall()
    for referral_id, counterpart, side in rows:
        db.execute(
            "DELETE FROM history WHERE referral_id = ? AND counterpart = ?",  # owner:
            (referral_id, counterpart),
        )
        db.execute(
            "DELETE FROM referrals WHERE referral_id = ? AND counterpart = ?",  # owner:
            (referral_id, counterpart),
        )
        if side == "recipient":
            db.execute("DELETE FROM data_keys WHERE referral_id = ?", (referral_id,))  # owner:
            db.execute(
                "UPDATE inbox SET body = NULL WHERE referral_id = ? AND sender = ?",  # owner:
                (referral_id, counterpart),
            )
            db.execute(
                "DELETE FROM received_attachments WHERE owner = ? AND referral_id = ?",
                (counterpart, referral_id),
            )
        else:
            db.execute(
                "UPDATE outbox SET envelope = ? WHERE referral_id = ? AND message_id IN"
                " (SELECT message_id FROM deliveries WHERE recipient = ?)",  # owner:
                (DROPPED, referral_id, counterpart),
            )
    return len(rows)
