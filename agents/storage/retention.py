"""Retention (docs/DESIGN.md "Retention"): legal holds and the batched purge.

Every purge deletes (or drops) at most `batch` rows older than `cutoff` and returns how many,
leaving alone whatever belongs to a referral under legal hold. Holds, like every referral
aggregate, are keyed by `(owner, referral_id)`. The outbox and webhook bodies carry no owner,
so there a hold on any referral of that id holds (it keeps more, never less).
"""

from __future__ import annotations

import sqlite3

from .db import Database
from .erasure import (
    DROPPED,
    delete_webhooks_naming,
    erase_held_under,
    erase_transferred_referral,
)
from .webhooks import delete_webhook_events

#: Referral states after which nothing more happens (agents.lifecycle.FINAL_STATES).
CLOSED_STATES = ("declined", "closed", "withdrawn", "cancelled", "expired")
#: Transfer request states after which nothing more happens (agents.transfers.FINAL_STATES).
CLOSED_REQUEST_STATES = ("refused", "revoked", "fulfilled", "lapsed")
#: Case transfer states after which nothing more happens (agents.transfers.FINAL_STATES).
CLOSED_TRANSFER_STATES = ("rejected", "revoked", "expired", "completed")

_HELD = "SELECT 1 FROM legal_holds h WHERE h.owner = {o} AND h.referral_id = {r}"


class Retention(Database):
    """`legal_holds`, and the purge of what the retention schedule no longer keeps."""

    # --- legal holds -----------------------------------------------------------------------

    @staticmethod
    def place_hold(
        db: sqlite3.Connection, owner: str, referral_id: str, *, at: int, by: str
    ) -> bool:
        """Put a referral under legal hold; False if it already was."""
        cursor = db.execute(
            "INSERT INTO legal_holds (owner, referral_id, placed_at, placed_by)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (owner, referral_id) DO NOTHING",
            (owner, referral_id, at, by),
        )
        return cursor.rowcount == 1

    @staticmethod
    def lift_hold(db: sqlite3.Connection, owner: str, referral_id: str) -> bool:
        """Lift a legal hold; False if there was none."""
        return (
            db.execute(
                "DELETE FROM legal_holds WHERE owner = ? AND referral_id = ?",
                (owner, referral_id),
            ).rowcount
            == 1
        )

    def hold_of(self, owner: str, referral_id: str) -> tuple[int, str] | None:
        """(placed at, by which API client) of the referral's legal hold, if any."""
        row = self._db.execute(
            "SELECT placed_at, placed_by FROM legal_holds WHERE owner = ? AND referral_id = ?",
            (owner, referral_id),
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    # --- the purge -------------------------------------------------------------------------

    @staticmethod
    def purge_envelopes(db: sqlite3.Connection, *, cutoff: int, batch: int) -> int:
        """Drop the envelope of outbox messages every copy of which was delivered (receipted)
        before `cutoff`; hash, kind, times and deliveries stay."""
        # The outbox has no owner column (its referral_id names a received referral for the
        # receipts and transitions sent about it), so a hold on any referral of that id holds.
        held = "SELECT 1 FROM legal_holds h WHERE h.referral_id = o.referral_id"
        return db.execute(
            "UPDATE outbox SET envelope = ? WHERE rowid IN (SELECT o.rowid FROM outbox o"  # noqa: S608
            " WHERE length(o.envelope) > 0"
            " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = o.message_id)"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = o.message_id"
            "   AND (d.state != 'delivered' OR d.delivered_at IS NULL OR d.delivered_at >= ?))"
            f" AND (o.referral_id IS NULL OR NOT EXISTS ({held}))"
            " LIMIT ?)",
            (DROPPED, cutoff, batch),
        ).rowcount

    @staticmethod
    def purge_idempotency(db: sqlite3.Connection, *, cutoff: int, batch: int) -> int:
        """Delete idempotency records made before `cutoff` (a retry after that is new work)."""
        return db.execute(
            "DELETE FROM idempotency WHERE rowid IN"
            " (SELECT rowid FROM idempotency WHERE created < ? LIMIT ?)",
            (cutoff, batch),
        ).rowcount

    @staticmethod
    def purge_webhooks(db: sqlite3.Connection, *, cutoff: int, batch: int) -> int:
        """Delete webhook events made before `cutoff`, delivered to every URL or not (an agent
        with no webhook URL, or whose URL was removed, queues them all the same), except
        those about a referral id under legal hold."""
        events = [
            str(r[0])
            for r in db.execute(
                "SELECT w.event_id FROM webhook_outbox w WHERE w.created < ?"
                " AND NOT EXISTS (SELECT 1 FROM legal_holds h"
                " WHERE h.referral_id = json_extract(CAST(w.body AS TEXT), '$.data.referral_id')"
                " ) LIMIT ?",
                (cutoff, batch),
            )
        ]
        return delete_webhook_events(db, events)

    @staticmethod
    def purge_history(db: sqlite3.Connection, *, cutoff: int, batch: int) -> int:
        """Delete lifecycle history entries made before `cutoff` (the referral's current
        state stays in `referrals`)."""
        held = _HELD.format(o="x.owner", r="x.referral_id")
        return db.execute(
            "DELETE FROM history WHERE seq IN (SELECT x.seq FROM history x"  # noqa: S608
            f" WHERE x.at < ? AND NOT EXISTS ({held}) LIMIT ?)",
            (cutoff, batch),
        ).rowcount

    def purge_closed(self, db: sqlite3.Connection, *, cutoff: int, batch: int) -> int:
        """Delete referral pairs closed, declined, withdrawn, cancelled or expired before
        `cutoff`, with their history; at a recipient also the data key, the sealed body, the
        attachments and the decisions and notices received under the pair (as an erasure,
        `erase_held_under`); at a sender the envelopes to that counterpart are dropped, and
        once a referral's last pair is purged, the decisions and notices held under it."""
        if self.agency is None:
            raise RuntimeError("purging received referrals needs the database's agency")
        marks = ",".join("?" * len(CLOSED_STATES))
        held = _HELD.format(o="x.owner", r="x.referral_id")
        rows = db.execute(
            "SELECT x.owner, x.referral_id, x.counterpart, x.side FROM referrals x"  # noqa: S608
            f" WHERE x.state IN ({marks}) AND x.updated < ? AND NOT EXISTS ({held}) LIMIT ?",
            (*CLOSED_STATES, cutoff, batch),
        ).fetchall()
        for owner, referral_id, counterpart, side in rows:
            key = (owner, referral_id, counterpart)
            db.execute(
                "DELETE FROM history WHERE owner = ? AND referral_id = ? AND counterpart = ?",
                key,
            )
            db.execute(
                "DELETE FROM referrals WHERE owner = ? AND referral_id = ? AND counterpart = ?",
                key,
            )
            if side == "recipient":
                db.execute(
                    "DELETE FROM data_keys WHERE owner = ? AND referral_id = ?",
                    (owner, referral_id),
                )
                db.execute(
                    "UPDATE inbox SET body = NULL WHERE sender = ? AND referral_id = ?",
                    (owner, referral_id),
                )
                db.execute(
                    "DELETE FROM received_attachments WHERE owner = ? AND referral_id = ?",
                    (owner, referral_id),
                )
                erase_held_under(db, owner, referral_id, agency=self.agency)
                delete_webhooks_naming(db, owner, referral_id)
            else:
                db.execute(
                    "UPDATE outbox SET envelope = ? WHERE referral_id = ? AND kind = 'referral'"
                    " AND message_id IN (SELECT message_id FROM deliveries WHERE recipient = ?)",
                    (DROPPED, referral_id, counterpart),
                )
                if not db.execute(
                    "SELECT 1 FROM referrals WHERE owner = ? AND referral_id = ? LIMIT 1",
                    (owner, referral_id),
                ).fetchone():  # its last pair gone: what it was told under it goes too
                    erase_held_under(db, owner, referral_id, agency=self.agency)
                    delete_webhooks_naming(db, owner, referral_id)
        return len(rows)

    def purge_transfer_requests(self, db: sqlite3.Connection, *, cutoff: int, batch: int) -> int:
        """Delete transfer requests in a final state since before `cutoff` whose pair is
        purged already (purge_closed): the pair (owner, referral id) with the other party,
        the owner at the requester and the requester at the owner. One still open stays,
        as does one whose referral is under legal hold."""
        marks = ",".join("?" * len(CLOSED_REQUEST_STATES))
        held = _HELD.format(o="x.owner", r="x.referral_id")
        return db.execute(
            "DELETE FROM transfer_requests WHERE seq IN (SELECT x.seq"  # noqa: S608
            f" FROM transfer_requests x WHERE x.state IN ({marks}) AND x.updated < ?"
            f" AND NOT EXISTS ({held})"
            " AND NOT EXISTS (SELECT 1 FROM referrals r WHERE r.owner = x.owner"
            " AND r.referral_id = x.referral_id AND r.counterpart ="
            " CASE WHEN x.requester = ? THEN x.owner ELSE x.requester END) LIMIT ?)",
            (*CLOSED_REQUEST_STATES, cutoff, self.agency, batch),
        ).rowcount

    def purge_transfers(self, db: sqlite3.Connection, *, cutoff: int, batch: int) -> int:
        """Delete case transfers in a final state since before `cutoff` (docs/DESIGN.md
        "Retention": R is kept as a received referral is, for the closed-referral period
        after its record's last step): at the transferee R with them, crypto-shredded as an
        erasure does (`erase_transferred_referral`: its data key, its sealed body, its
        attachments, the webhook events naming it), at the owner the `case-transfer`
        envelope, which holds R sealed to the transferee, dropped. One still open, or
        `accepted`, stays."""
        if self.agency is None:
            raise RuntimeError("purging received transfers needs the database's agency")
        marks = ",".join("?" * len(CLOSED_TRANSFER_STATES))
        rows = db.execute(
            "SELECT owner, transfer_id, transferee, referral_id, message_id"  # noqa: S608
            f" FROM case_transfers WHERE state IN ({marks}) AND updated < ? LIMIT ?",
            (*CLOSED_TRANSFER_STATES, cutoff, batch),
        ).fetchall()
        for owner, transfer_id, transferee, referral_id, message_id in rows:
            if transferee == self.agency:
                erase_transferred_referral(db, owner, referral_id, agency=self.agency)
                db.execute(  # erased, the rows would outlive the transfer they belong to
                    "DELETE FROM received_attachments WHERE owner = ? AND referral_id = ?",
                    (owner, referral_id),
                )
            else:
                db.execute(
                    "UPDATE outbox SET envelope = ? WHERE message_id = ?", (DROPPED, message_id)
                )
            db.execute(
                "DELETE FROM case_transfers WHERE owner = ? AND transfer_id = ?",
                (owner, transfer_id),
            )
        return len(rows)

    def purge_break_glass(self, db: sqlite3.Connection, *, cutoff: int, batch: int) -> int:
        """Delete break-glass holds decided before `cutoff` (their document went at the
        decision; the row is who asked and who decided, and its client_reference): a
        refused or lapsed one then, a confirmed one once its referral pairs are purged too
        (purge_closed), none under legal hold."""
        held = _HELD.format(o="?", r="x.referral_id")
        return db.execute(
            "DELETE FROM break_glass WHERE referral_id IN (SELECT x.referral_id"  # noqa: S608
            " FROM break_glass x WHERE x.state <> 'awaiting_confirmation'"
            f" AND x.decided_at < ? AND NOT EXISTS ({held})"
            " AND NOT EXISTS (SELECT 1 FROM referrals r WHERE r.owner = ?"
            " AND r.referral_id = x.referral_id) LIMIT ?)",
            (cutoff, self.agency, self.agency, batch),
        ).rowcount
