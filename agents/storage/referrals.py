"""Referrals, their history and the data keys of received bodies (crypto-shredding).

Every row is keyed by `(owner, referral_id)` (agents/storage/schema.py): `owner` is the agency
that created and sent the referral. Nothing here looks a referral up by its id alone except
`owners_of`, which callers use to ask which owner a bare id names.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .db import Database


@dataclass(frozen=True, slots=True)
class NewReferral:
    """A referral pair to record: this agency's view of one referral with one counterpart."""

    owner: str
    referral_id: str
    counterpart: str
    side: str
    state: str
    referral_type: str
    urgency: str
    legal_basis: str
    consent_receipt_id: str | None
    message_id: str
    created: int
    expires: int | None = None
    client_reference: str | None = None
    #: What a sent pair carried: the data categories of its minimised body (sender only).
    categories: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One row of a referral pair's history."""

    from_state: str | None
    to_state: str
    party: str
    reason: str | None
    outcome: str | None
    at: int


@dataclass(frozen=True, slots=True)
class SentCopy:
    """What this agency holds of one recipient's copy of a referral it sent (a subject access
    report, agents/subject_access.py): times are Unix seconds, None where it has not happened
    (or, for `categories`, was sent before they were kept)."""

    recipient: str
    state: str
    categories: frozenset[str] | None
    referral_type: str
    urgency: str
    legal_basis: str
    created: int
    sent_at: int | None
    delivered_at: int | None
    consent_withdrawn_at: int | None
    erasure_confirmed_at: int | None


def sent_copy(r: Sequence[Any]) -> SentCopy:
    """A SentCopy from the row (recipient, state, categories comma-joined, referral_type,
    urgency, legal_basis, created, sent_at, delivered_at, consent withdrawn_at, erasure
    confirmed_at)."""
    return SentCopy(
        recipient=str(r[0]),
        state=str(r[1]),
        categories=None if r[2] is None else frozenset(str(r[2]).split(",")) - {""},
        referral_type=str(r[3]),
        urgency=str(r[4]),
        legal_basis=str(r[5]),
        created=int(r[6]),
        sent_at=r[7],
        delivered_at=r[8],
        consent_withdrawn_at=r[9],
        erasure_confirmed_at=r[10],
    )


#: The states `overdue_candidates` looks in, written into its SQL and the partial index
#: `referrals_overdue`: those in which the `respond` clock runs (agents/clocks.py; a test
#: holds the two equal).
RESPOND_RUNS = ("submitted", "delivered", "acknowledged", "more_info_requested")
#: RESPOND_RUNS as SQL, the same text the partial index `referrals_overdue` holds.
RESPOND_RUNS_SQL = ", ".join(f"'{state}'" for state in RESPOND_RUNS)


def _mark_notified(
    db: sqlite3.Connection,
    column: Literal["escalated_at", "overdue_at"],
    pair: tuple[str, str, str],
    at: int,
) -> None:
    """Record when a pair's clock notice went to the coordinators (one column per clock)."""
    db.execute(
        f"UPDATE referrals SET {column} = ?"  # noqa: S608 (a column of the Literal above)
        " WHERE owner = ? AND referral_id = ? AND counterpart = ?",
        (at, *pair),
    )


class Referrals(Database):
    """`referrals` (one row per owner, referral and counterpart), `history`, `data_keys`."""

    def referrals_page(
        self, *, after: int, since: int, state: str | None, limit: int
    ) -> list[tuple[Any, ...]]:
        """Referral pairs changed at or after `since`, in a given state or any, by rowid."""
        columns = (
            "SELECT rowid, referral_id, counterpart, side, state, referral_type, urgency,"
            " created, updated, owner FROM referrals WHERE rowid > ? AND updated >= ?"
        )
        if state is None:
            return self._db.execute(
                columns + " ORDER BY rowid LIMIT ?", (after, since, limit)
            ).fetchall()
        return self._db.execute(
            columns + " AND state = ? ORDER BY rowid LIMIT ?", (after, since, state, limit)
        ).fetchall()

    def referral_withdrawn(self, referral_id: str, recipient: str) -> bool:
        """Whether this agency withdrew the referral from `recipient`, or the consent it
        cites was withdrawn: then none of it may travel again."""
        row = self._db.execute(
            "SELECT r.state, c.withdrawn_at FROM referrals r"
            " LEFT JOIN consents c ON c.receipt_id = r.consent_receipt_id"
            " WHERE r.referral_id = ? AND r.counterpart = ? AND r.side = 'sender'",
            (referral_id, recipient),
        ).fetchone()
        return row is not None and (row[0] == "withdrawn" or row[1] is not None)

    def owners_of(self, referral_id: str) -> list[str]:
        """The owners of the referrals held with this id (more than one only if another
        agency chose the same id as its owner), sorted."""
        rows = self._db.execute(
            "SELECT DISTINCT owner FROM referrals WHERE referral_id = ? ORDER BY owner",
            (referral_id,),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def client_reference_used(self, client_reference: str) -> str | None:
        """The id of the referral this agency sent under `client_reference`, if any."""
        row = self._db.execute(
            "SELECT referral_id FROM referrals WHERE client_reference = ? LIMIT 1",
            (client_reference,),
        ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def insert_referral(db: sqlite3.Connection, r: NewReferral) -> None:
        """Record a new pair; sqlite3.IntegrityError if (owner, id, counterpart) is held."""
        db.execute(
            "INSERT INTO referrals (owner, referral_id, counterpart, side, state, referral_type,"
            " urgency, legal_basis, consent_receipt_id, message_id, created, updated,"
            " expires, client_reference, categories)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.owner,
                r.referral_id,
                r.counterpart,
                r.side,
                r.state,
                r.referral_type,
                r.urgency,
                r.legal_basis,
                r.consent_receipt_id,
                r.message_id,
                r.created,
                r.created,
                r.expires,
                r.client_reference,
                None if r.categories is None else ",".join(sorted(r.categories)),
            ),
        )

    @staticmethod
    def add_history(
        db: sqlite3.Connection, owner: str, referral_id: str, counterpart: str, step: Step
    ) -> None:
        db.execute(
            "INSERT INTO history (owner, referral_id, counterpart, from_state, to_state, party,"
            " reason, outcome, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                owner,
                referral_id,
                counterpart,
                step.from_state,
                step.to_state,
                step.party,
                step.reason,
                step.outcome,
                step.at,
            ),
        )

    @staticmethod
    def set_state(
        db: sqlite3.Connection, owner: str, referral_id: str, counterpart: str, step: Step
    ) -> None:
        """Move a pair to `step.to_state` and add the step to its history."""
        db.execute(
            "UPDATE referrals SET state = ?, updated = ?"
            " WHERE owner = ? AND referral_id = ? AND counterpart = ?",
            (step.to_state, step.at, owner, referral_id, counterpart),
        )
        Referrals.add_history(db, owner, referral_id, counterpart, step)

    def pairs(self, owner: str, referral_id: str) -> list[tuple[str, str, str]]:
        """(counterpart, side, state) of every pair of a referral."""
        rows = self._db.execute(
            "SELECT counterpart, side, state FROM referrals WHERE owner = ? AND referral_id = ?"
            " ORDER BY counterpart",
            (owner, referral_id),
        ).fetchall()
        return [(str(c), str(s), str(t)) for c, s, t in rows]

    @staticmethod
    def pair(
        db: sqlite3.Connection, owner: str, referral_id: str, counterpart: str
    ) -> tuple[str, str] | None:
        """(side, state) of the pair of (owner, referral id) with `counterpart`, if any."""
        row = db.execute(
            "SELECT side, state FROM referrals WHERE owner = ? AND referral_id = ?"
            " AND counterpart = ?",
            (owner, referral_id, counterpart),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    @staticmethod
    def sent_pair_of_message(
        db: sqlite3.Connection, message_id: str, recipient: str
    ) -> tuple[str, str, str] | None:
        """(owner, referral id, state) of the pair this agency sent to `recipient` in
        `message_id`."""
        row = db.execute(
            "SELECT owner, referral_id, state FROM referrals WHERE message_id = ?"
            " AND counterpart = ? AND side = 'sender'",
            (message_id, recipient),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]))

    @staticmethod
    def holds_received(db: sqlite3.Connection, owner: str, referral_id: str) -> bool:
        """Whether `owner` itself sent the referral (owner, referral id) here."""
        row = db.execute(
            "SELECT 1 FROM referrals WHERE owner = ? AND referral_id = ? AND counterpart = ?"
            " AND side = 'recipient'",
            (owner, referral_id, owner),
        ).fetchone()
        return row is not None

    @staticmethod
    def received_receipt(db: sqlite3.Connection, owner: str, referral_id: str) -> str | None:
        """The consent receipt the received referral (owner, referral id) cited, if any."""
        row = db.execute(
            "SELECT consent_receipt_id FROM referrals WHERE owner = ? AND referral_id = ?"
            " AND counterpart = ? AND side = 'recipient'",
            (owner, referral_id, owner),
        ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def referral_rows(self, owner: str, referral_id: str) -> list[tuple[Any, ...]]:
        """(counterpart, side, state, referral_type, urgency, legal_basis, message_id,
        created, updated, escalated_at, client_reference, envelope_created) of every pair of a
        referral; `envelope_created` is the `created` of the referral's envelope, sent or
        received (where its `respond` clock starts, agents/clocks.py): the outbox and inbox
        rows are never deleted, only their bodies."""
        return self._db.execute(
            "SELECT counterpart, side, state, referral_type, urgency, legal_basis, message_id,"
            " created, updated, escalated_at, client_reference, CASE r.side WHEN 'sender'"
            " THEN (SELECT o.created FROM outbox o WHERE o.message_id = r.message_id)"
            " ELSE (SELECT i.created FROM inbox i WHERE i.message_id = r.message_id) END"
            " FROM referrals r WHERE owner = ? AND referral_id = ? ORDER BY counterpart",
            (owner, referral_id),
        ).fetchall()

    def sent_copies(self, owner: str, referral_id: str) -> list[SentCopy]:
        """Every copy of the referral (owner, referral id) this agency sent, by recipient."""
        rows = self._db.execute(
            "SELECT r.counterpart, r.state, r.categories, r.referral_type, r.urgency,"
            " r.legal_basis, r.created, d.sent_at, d.delivered_at, c.withdrawn_at,"
            " u.confirmed_at FROM referrals r"
            " LEFT JOIN deliveries d ON d.message_id = r.message_id AND d.recipient = r.counterpart"
            " LEFT JOIN consents c ON c.receipt_id = r.consent_receipt_id"
            " LEFT JOIN consent_uses u ON u.receipt_id = r.consent_receipt_id"
            " AND u.agency = r.counterpart AND u.referral_id = r.referral_id"
            " WHERE r.owner = ? AND r.referral_id = ? AND r.side = 'sender' ORDER BY r.counterpart",
            (owner, referral_id),
        ).fetchall()
        return [sent_copy(r) for r in rows]

    def history_rows(self, owner: str, referral_id: str) -> list[tuple[Any, ...]]:
        """(counterpart, from, to, party, reason, outcome, at) of a referral, in order."""
        return self._db.execute(
            "SELECT counterpart, from_state, to_state, party, reason, outcome, at FROM history"
            " WHERE owner = ? AND referral_id = ? ORDER BY seq",
            (owner, referral_id),
        ).fetchall()

    def escalation_candidates(
        self, urgencies: Iterable[str]
    ) -> list[tuple[str, str, str, str, str, int]]:
        """(owner, referral id, recipient, state, urgency, created) of sent referrals of
        `urgencies` (those with an acknowledge clock) not yet acknowledged nor escalated."""
        wanted = sorted(set(urgencies))
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        rows = self._db.execute(
            "SELECT owner, referral_id, counterpart, state, urgency, created FROM referrals"  # noqa: S608 (placeholders only)
            " WHERE side = 'sender' AND escalated_at IS NULL AND state IN ('submitted',"
            f" 'delivered') AND urgency IN ({marks})",
            wanted,
        ).fetchall()
        return [(str(a), str(b), str(c), str(d), str(e), int(f)) for a, b, c, d, e, f in rows]

    @staticmethod
    def mark_escalated(
        db: sqlite3.Connection, owner: str, referral_id: str, recipient: str, at: int
    ) -> None:
        _mark_notified(db, "escalated_at", (owner, referral_id, recipient), at)

    def overdue_candidates(
        self, urgencies: Iterable[str]
    ) -> list[tuple[str, str, str, str, str, int]]:
        """(owner, referral id, recipient, state, urgency, envelope created) of sent referrals
        of `urgencies` whose `respond` clock runs (RESPOND_RUNS) and has sent no notice. A
        copy that failed (refused, its recipient removed or revoked) is left out: that
        recipient never had the referral to answer."""
        wanted = sorted(set(urgencies))
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        rows = self._db.execute(
            "SELECT r.owner, r.referral_id, r.counterpart, r.state, r.urgency, o.created"  # noqa: S608 (placeholders only)
            " FROM referrals r JOIN outbox o ON o.message_id = r.message_id"
            f" WHERE r.side = 'sender' AND r.overdue_at IS NULL AND r.state IN ({RESPOND_RUNS_SQL})"
            f" AND r.urgency IN ({marks}) AND NOT EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.message_id = r.message_id AND d.recipient = r.counterpart"
            " AND d.state = 'failed')",
            wanted,
        ).fetchall()
        return [(str(a), str(b), str(c), str(d), str(e), int(f)) for a, b, c, d, e, f in rows]

    @staticmethod
    def mark_overdue(
        db: sqlite3.Connection, owner: str, referral_id: str, recipient: str, at: int
    ) -> None:
        _mark_notified(db, "overdue_at", (owner, referral_id, recipient), at)

    def expired_pairs(self, now: int) -> list[tuple[str, str, str, str]]:
        """(owner, referral id, counterpart, state) of open pairs expired by `now`."""
        rows = self._db.execute(
            "SELECT owner, referral_id, counterpart, state FROM referrals"
            " WHERE expires IS NOT NULL AND expires <= ? AND state IN ('submitted', 'delivered',"
            " 'acknowledged', 'more_info_requested')",
            (now,),
        ).fetchall()
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    # --- data keys (crypto-shredding) -------------------------------------------------------

    @staticmethod
    def put_data_key(
        db: sqlite3.Connection, owner: str, referral_id: str, sealed_key: bytes
    ) -> None:
        """Store a received referral's sealed data key; sqlite3.IntegrityError if the
        referral (owner, referral id) already has one: a key is never replaced."""
        db.execute(
            "INSERT INTO data_keys (owner, referral_id, sealed_key) VALUES (?, ?, ?)",
            (owner, referral_id, sealed_key),
        )

    def data_key(self, owner: str, referral_id: str) -> bytes | None:
        """The sealed data key of a received referral, None if unknown or erased."""
        return self._blob(
            "SELECT sealed_key FROM data_keys WHERE owner = ? AND referral_id = ?",
            (owner, referral_id),
        )
