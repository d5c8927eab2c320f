"""SQL of erasure (docs/DESIGN.md "Erasure"): the rows an erasure deletes at a recipient,
the envelopes and attachment uploads it drops at the sender, and the two queues of work
it leaves for after the commit is durable and the WAL truncated.

An envelope dropped from the outbox is stored as the empty BLOB (`DROPPED`): the column is
NOT NULL in every database made so far, and its hash, kind, times and deliveries stay for
the audit trail. Where a query would match on the referral's owning agency it matches on
`sender` / `counterpart` today, marked `# owner:`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

#: What an outbox envelope dropped by erasure or retention is replaced with.
DROPPED = b""
#: The failure reason of a copy that was still queued when its consent was withdrawn.
WITHDRAWN_REASON = "consent-withdrawn"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS erasure_confirmations (
        receipt_id   TEXT NOT NULL,
        sender       TEXT NOT NULL,
        referral_ids TEXT NOT NULL,
        erased_at    INTEGER NOT NULL,
        PRIMARY KEY (receipt_id, sender)
    ) STRICT""",
    """CREATE TABLE IF NOT EXISTS attachment_deletions (
        object_name TEXT PRIMARY KEY,
        queued_at   INTEGER NOT NULL
    ) STRICT""",
)


def create_tables(db: sqlite3.Connection) -> None:
    for statement in SCHEMA:
        db.execute(statement)


@dataclass(frozen=True, slots=True)
class PendingConfirmation:
    """An erasure committed here whose confirmation is not sent yet."""

    receipt_id: str
    sender: str
    referral_ids: tuple[str, ...]
    erased_at: int


# --- at the recipient -----------------------------------------------------------------------


def erase_received(db: sqlite3.Connection, referral_id: str, sender: str) -> None:
    """Delete what opens or reveals a received referral: its data key, its sealed body,
    its attachments' keys and content, and the webhook events that name it. The inbox row
    (message id, envelope hash) stays: it is what refuses a replay of the envelope."""
    # owner: data_keys is keyed by referral_id alone today; match (owner, referral_id).
    db.execute("DELETE FROM data_keys WHERE referral_id = ?", (referral_id,))
    db.execute(
        "UPDATE inbox SET body = NULL WHERE referral_id = ? AND sender = ?",  # owner: sender
        (referral_id, sender),
    )
    db.execute(
        "UPDATE received_attachments SET sealed_key = NULL, data = NULL, state = 'erased'"
        " WHERE owner = ? AND referral_id = ?",
        (sender, referral_id),
    )
    delete_webhooks_naming(db, referral_id, sender)


def delete_webhooks_naming(db: sqlite3.Connection, referral_id: str, agency: str) -> int:
    """Delete the webhook events (queued or delivered) about `referral_id` from or to
    `agency`: their bodies name the referral. How many."""
    events = [
        str(r[0])
        for r in db.execute(
            # The body is JSON text in a BLOB: cast, or SQLite 3.45+ would read it as JSONB.
            "SELECT event_id FROM webhook_outbox"
            " WHERE json_extract(CAST(body AS TEXT), '$.data.referral_id') = ?"
            " AND coalesce(json_extract(CAST(body AS TEXT), '$.data.sender'),"  # owner:
            " json_extract(CAST(body AS TEXT), '$.data.counterpart')) = ?",
            (referral_id, agency),
        )
    ]
    for event_id in events:
        db.execute("DELETE FROM webhook_deliveries WHERE event_id = ?", (event_id,))
        db.execute("DELETE FROM webhook_outbox WHERE event_id = ?", (event_id,))
    return len(events)


def queue_confirmation(db: sqlite3.Connection, c: PendingConfirmation) -> None:
    db.execute(
        "INSERT INTO erasure_confirmations (receipt_id, sender, referral_ids, erased_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (receipt_id, sender) DO UPDATE SET"
        " referral_ids = excluded.referral_ids, erased_at = excluded.erased_at",
        (c.receipt_id, c.sender, json.dumps(sorted(c.referral_ids)), c.erased_at),
    )


def pending_confirmations(db: sqlite3.Connection, limit: int) -> list[PendingConfirmation]:
    rows = db.execute(
        "SELECT receipt_id, sender, referral_ids, erased_at FROM erasure_confirmations"
        " ORDER BY erased_at, receipt_id LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        PendingConfirmation(str(r[0]), str(r[1]), tuple(json.loads(r[2])), int(r[3])) for r in rows
    ]


def confirmation_sent(db: sqlite3.Connection, receipt_id: str, sender: str) -> None:
    db.execute(
        "DELETE FROM erasure_confirmations WHERE receipt_id = ? AND sender = ?",
        (receipt_id, sender),
    )


# --- at the sender ------------------------------------------------------------------------


def drop_sent(db: sqlite3.Connection, referral_ids: Sequence[str], *, now: int) -> int:
    """At withdrawal: drop the envelope of every referral message of `referral_ids` (they
    hold the body and the attachment key, sealed to the recipient), fail the copies not yet
    published, delete the attachment uploads and queue their objects for deletion from the
    bus. How many envelopes were dropped."""
    dropped = 0
    for referral_id in referral_ids:
        # owner: outbox rows of this agency's own referral (owner = this agency).
        messages = [
            str(r[0])
            for r in db.execute(
                "SELECT message_id FROM outbox WHERE referral_id = ? AND kind = 'referral'",
                (referral_id,),
            )
        ]
        for message_id in messages:
            dropped += db.execute(
                "UPDATE outbox SET envelope = ? WHERE message_id = ? AND length(envelope) > 0",
                (DROPPED, message_id),
            ).rowcount
            db.execute(
                "UPDATE deliveries SET state = 'failed', failure = ?"
                " WHERE message_id = ? AND state = 'queued'",
                (WITHDRAWN_REASON, message_id),
            )
        prefix = f"{referral_id}."  # keys.subjects.attachment_object
        names = [
            str(r[0])
            for r in db.execute(
                "SELECT object_name FROM attachment_uploads WHERE substr(object_name, 1, ?) = ?",
                (len(prefix), prefix),
            )
        ]
        for name in names:
            db.execute("DELETE FROM attachment_uploads WHERE object_name = ?", (name,))
            db.execute(
                "INSERT INTO attachment_deletions (object_name, queued_at) VALUES (?, ?)"
                " ON CONFLICT (object_name) DO NOTHING",
                (name, now),
            )
    return dropped


def queued_deletions(db: sqlite3.Connection, limit: int) -> list[str]:
    rows = db.execute(
        "SELECT object_name FROM attachment_deletions ORDER BY queued_at, object_name LIMIT ?",
        (limit,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def deletion_done(db: sqlite3.Connection, object_name: str) -> None:
    db.execute("DELETE FROM attachment_deletions WHERE object_name = ?", (object_name,))
