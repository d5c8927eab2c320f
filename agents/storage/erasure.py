"""Erasure (docs/DESIGN.md "Erasure"): what an erasure deletes at a recipient, the envelopes
and attachment uploads it drops at the sender, and the two queues of work it leaves for after
the commit is durable and the WAL truncated.

An envelope dropped from the outbox is stored as the empty BLOB (`DROPPED`): the column is
NOT NULL in every database made so far, and its hash, kind, times and deliveries stay for the
audit trail. The outbox has no owner column: its `referral_id` names this agency's own referral
for referral messages, but a received one for the delivery receipts and transitions it sends
about it; `drop_sent` therefore drops referral messages only.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from keys.subjects import attachment_object

from .db import Database
from .webhooks import delete_webhook_events

#: What an outbox envelope dropped by erasure or retention is replaced with.
DROPPED = b""
#: The failure reason of a copy that was still queued when its consent was withdrawn.
WITHDRAWN_REASON = "consent-withdrawn"


@dataclass(frozen=True, slots=True)
class PendingConfirmation:
    """An erasure committed here whose confirmation is not sent yet."""

    receipt_id: str
    sender: str
    referral_ids: tuple[str, ...]
    erased_at: int


class Erasure(Database):
    """`erasure_confirmations`, `attachment_deletions`, and the deletions themselves."""

    # --- at the recipient -------------------------------------------------------------------

    def erase_received(self, db: sqlite3.Connection, owner: str, referral_id: str) -> None:
        """Delete what opens or reveals the received referral (owner, referral id): its data
        key, its sealed body, its attachments' keys and content, what this agency holds
        about the person under the pair (`erase_held_under`), and the webhook events that
        name it. The inbox row (message id, envelope hash) stays: it refuses a replay."""
        db.execute(
            "DELETE FROM data_keys WHERE owner = ? AND referral_id = ?", (owner, referral_id)
        )
        db.execute(
            "UPDATE inbox SET body = NULL WHERE sender = ? AND referral_id = ?",
            (owner, referral_id),
        )
        db.execute(
            "UPDATE received_attachments SET sealed_key = NULL, data = NULL, state = 'erased'"
            " WHERE owner = ? AND referral_id = ?",
            (owner, referral_id),
        )
        erase_held_under(db, owner, referral_id, agency=self._own_agency())
        delete_webhooks_naming(db, owner, referral_id)

    def erase_transferred(self, db: sqlite3.Connection, owner: str, referral_id: str) -> None:
        """Delete what opens or reveals R, the referral of a transfer `owner` sent here
        under `referral_id` (PROTOCOL §8.10 "R is the transferee's own"): as
        `erase_transferred_referral`. The transfer row (ids, codes, its state) stays, R
        read as erased from then on."""
        erase_transferred_referral(db, owner, referral_id, agency=self._own_agency())

    def _own_agency(self) -> str:
        if self.agency is None:  # which decisions are its own is not known: refuse to guess
            raise RuntimeError("erasing a received referral needs the database's agency")
        return self.agency

    def is_erased(self, owner: str, referral_id: str) -> bool:
        """`erased_received`, read outside a transaction."""
        return self.erased_received(self._db, owner, referral_id)

    @staticmethod
    def erased_received(db: sqlite3.Connection, owner: str, referral_id: str) -> bool:
        """Whether `owner` sent the referral (owner, referral id) here and it was erased
        (its pair stays, its data key is gone: only an erasure deletes that alone)."""
        row = db.execute(
            "SELECT 1 FROM referrals r WHERE r.owner = ? AND r.referral_id = ?"
            " AND r.counterpart = r.owner AND r.side = 'recipient' AND NOT EXISTS"
            " (SELECT 1 FROM data_keys k WHERE k.owner = r.owner"
            " AND k.referral_id = r.referral_id)",
            (owner, referral_id),
        ).fetchone()
        return row is not None

    @staticmethod
    def held_under(db: sqlite3.Connection, owner: str, referral_id: str) -> bool:
        """Whether decisions or notices are held under the pair (owner, referral id): at a
        coordinator they arrive under the referrer's pair without its referral."""
        for table in ("decisions", "protection_notices"):
            row = db.execute(
                f"SELECT 1 FROM {table} WHERE owner = ? AND referral_id = ? LIMIT 1",  # noqa: S608
                (owner, referral_id),
            ).fetchone()
            if row is not None:
                return True
        return False

    @staticmethod
    def queue_confirmation(db: sqlite3.Connection, c: PendingConfirmation) -> None:
        """Queue a confirmation; one still queued for the same receipt and sender (a second
        withdrawal came before it went) is merged into it, never overwritten."""
        row = db.execute(
            "SELECT referral_ids FROM erasure_confirmations WHERE receipt_id = ? AND sender = ?",
            (c.receipt_id, c.sender),
        ).fetchone()
        ids = set(c.referral_ids) | (set() if row is None else set(json.loads(row[0])))
        db.execute(
            "INSERT INTO erasure_confirmations (receipt_id, sender, referral_ids, erased_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (receipt_id, sender) DO UPDATE SET"
            " referral_ids = excluded.referral_ids, erased_at = excluded.erased_at",
            (c.receipt_id, c.sender, json.dumps(sorted(ids)), c.erased_at),
        )

    def pending_confirmations(self, limit: int) -> list[PendingConfirmation]:
        rows = self._db.execute(
            "SELECT receipt_id, sender, referral_ids, erased_at FROM erasure_confirmations"
            " ORDER BY erased_at, receipt_id LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            PendingConfirmation(str(r[0]), str(r[1]), tuple(json.loads(r[2])), int(r[3]))
            for r in rows
        ]

    @staticmethod
    def confirmation_sent(db: sqlite3.Connection, receipt_id: str, sender: str) -> None:
        db.execute(
            "DELETE FROM erasure_confirmations WHERE receipt_id = ? AND sender = ?",
            (receipt_id, sender),
        )

    # --- at the sender ----------------------------------------------------------------------

    @staticmethod
    def drop_sent(db: sqlite3.Connection, referral_ids: Sequence[str], *, now: int) -> int:
        """At withdrawal: drop the envelope of every referral message of this agency's own
        `referral_ids`, and of every `case-transfer` whose R has one of those ids (they
        hold the body and the attachment key, sealed to the recipient),
        fail the copies not yet published, delete the attachment uploads and queue their
        objects for erasure from the bus. How many envelopes were dropped."""
        dropped = 0
        for referral_id in referral_ids:
            messages = [
                str(r[0])
                for r in db.execute(
                    "SELECT message_id FROM outbox WHERE referral_id = ?"
                    " AND kind IN ('referral', 'case-transfer')",
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
            prefix = attachment_object(referral_id, "")
            names = [
                str(r[0])
                for r in db.execute(
                    "SELECT object_name FROM attachment_uploads"
                    " WHERE substr(object_name, 1, ?) = ?",
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

    def queued_deletions(self, limit: int) -> list[str]:
        rows = self._db.execute(
            "SELECT object_name FROM attachment_deletions ORDER BY queued_at, object_name LIMIT ?",
            (limit,),
        ).fetchall()
        return [str(r[0]) for r in rows]

    @staticmethod
    def deletion_done(db: sqlite3.Connection, object_name: str) -> None:
        db.execute("DELETE FROM attachment_deletions WHERE object_name = ?", (object_name,))


def erase_held_under(db: sqlite3.Connection, owner: str, referral_id: str, *, agency: str) -> None:
    """Delete the identification decisions and protection notices (PROTOCOL §8.7, §8.9)
    this agency received under the pair (owner, referral id): the signed document, the
    reason and salt beside a decision. Those `agency` signed itself (a competent authority's
    own, stored under the case's opening referral) stay: they are its record of an act of
    official authority (docs/DESIGN.md "Erasure"). The inbox keeps no body of either kind
    (agents/agent.py `_commit`), only the row that refuses a replay."""
    db.execute(
        "DELETE FROM decisions WHERE owner = ? AND referral_id = ? AND authority != ?",
        (owner, referral_id, agency),
    )
    db.execute(
        "DELETE FROM protection_notices WHERE owner = ? AND referral_id = ? AND authority != ?",
        (owner, referral_id, agency),
    )


def erase_transferred_referral(
    db: sqlite3.Connection, owner: str, referral_id: str, *, agency: str
) -> None:
    """At the transferee `agency`: delete R of the transfer `owner` sent it under
    `referral_id` — its data key (owned by `agency`: R is its own record), its sealed body,
    its attachments' keys and content and the webhook events naming it. The inbox row of
    the `case-transfer` keeps no body (agents/agent.py `_commit`); one stored by an agent
    before that is cleared too."""
    db.execute("DELETE FROM data_keys WHERE owner = ? AND referral_id = ?", (agency, referral_id))
    db.execute(
        "UPDATE inbox SET body = NULL WHERE sender = ? AND kind = 'case-transfer'"
        " AND message_id IN (SELECT message_id FROM case_transfers"
        " WHERE owner = ? AND referral_id = ?)",
        (owner, owner, referral_id),
    )
    db.execute(
        "UPDATE case_transfers SET body = NULL WHERE owner = ? AND referral_id = ?",
        (owner, referral_id),
    )
    db.execute(
        "UPDATE received_attachments SET sealed_key = NULL, data = NULL, state = 'erased'"
        " WHERE owner = ? AND referral_id = ?",
        (owner, referral_id),
    )
    delete_webhooks_naming(db, owner, referral_id)


def delete_webhooks_naming(db: sqlite3.Connection, owner: str, referral_id: str) -> int:
    """Delete the webhook events (queued or delivered) about the referral (owner, referral
    id): their bodies name it, by the agency that sent it (`sender`, `counterpart`) or the
    pair's `owner` (a decision's or a notice's). How many."""
    events = [
        str(r[0])
        for r in db.execute(
            # The body is JSON text in a BLOB: cast, or SQLite 3.45+ would read it as JSONB.
            "SELECT event_id FROM webhook_outbox"
            " WHERE json_extract(CAST(body AS TEXT), '$.data.referral_id') = ?"
            " AND coalesce(json_extract(CAST(body AS TEXT), '$.data.sender'),"
            " json_extract(CAST(body AS TEXT), '$.data.counterpart'),"
            " json_extract(CAST(body AS TEXT), '$.data.owner')) = ?",
            (referral_id, owner),
        )
    ]
    return delete_webhook_events(db, events)
