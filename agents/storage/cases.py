"""Identification cases and decisions (docs/PROTOCOL.md §8.7).

`cases`: at a competent authority, one row per case it opened on accepting a referral of
type `nrm_full`, keyed by its random `case_id` and naming the opening referral (owner,
referral_id); its state is agents/cases.py's, and `left_reason` the leaving reason code of a
case in `left_process` (NULL otherwise; a column added by migration 5). `decisions`: every
signed decision this agency holds, as signed (verified again whenever it is read), with the
pair it came under (or, at the authority, the opening referral) and the reason and salt
when this agency may know them. `case_referrals`: the referrals the authority sent for a
case (to providers), whose accepted recipients get its decisions; a referral belongs to one
case at most.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .db import Database


@dataclass(frozen=True, slots=True)
class Case:
    """A case at the authority that opened it."""

    case_id: str
    owner: str
    referral_id: str
    state: str
    age_route: str
    opened_at: int
    updated: int
    #: Why the person left (agents/cases.py LEAVE_REASONS), once the case is `left_process`.
    left_reason: str | None = None


@dataclass(frozen=True, slots=True)
class StoredDecision:
    """A signed decision as this agency holds it: `owner` and `referral_id` name the pair it
    came under (at the authority, the case's opening referral)."""

    authority: str
    decision_id: str
    case_id: str
    stage: str
    outcome: str
    owner: str
    referral_id: str
    signed: bytes
    reason: str | None
    salt: bytes | None
    stored_at: int


_SELECT_CASE = (
    "SELECT case_id, owner, referral_id, state, age_route, opened_at, updated, left_reason"
    " FROM cases"
)
_SELECT_DECISION = (
    "SELECT authority, decision_id, case_id, stage, outcome, owner, referral_id, signed,"
    " reason, salt, stored_at FROM decisions"
)


class Cases(Database):
    """`cases` and `decisions`."""

    @staticmethod
    def open_case(db: sqlite3.Connection, case: Case) -> None:
        db.execute(
            "INSERT INTO cases (case_id, owner, referral_id, state, age_route, opened_at,"
            " updated, left_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            _case_row(case),
        )

    @staticmethod
    def set_case_state(db: sqlite3.Connection, case_id: str, state: str, at: int) -> None:
        db.execute(
            "UPDATE cases SET state = ?, updated = ? WHERE case_id = ?", (state, at, case_id)
        )

    @staticmethod
    def leave_case(db: sqlite3.Connection, case_id: str, state: str, reason: str, at: int) -> None:
        """Move the case to `state` (the caller's `left_process`), keeping why it left."""
        db.execute(
            "UPDATE cases SET state = ?, left_reason = ?, updated = ? WHERE case_id = ?",
            (state, reason, at, case_id),
        )

    @staticmethod
    def case(db: sqlite3.Connection, case_id: str) -> Case | None:
        row = db.execute(_SELECT_CASE + " WHERE case_id = ?", (case_id,)).fetchone()
        return None if row is None else Case(*row)

    @staticmethod
    def cases_in(
        db: sqlite3.Connection, states: tuple[str, ...], *, updated_before: int
    ) -> list[str]:
        """The ids of the cases in one of `states` since before `updated_before`, by id."""
        marks = ", ".join("?" for _ in states)
        rows = db.execute(
            f"SELECT case_id FROM cases WHERE state IN ({marks}) AND updated < ?"  # noqa: S608
            " ORDER BY case_id",
            (*states, updated_before),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def cases_page(self, *, after: str, limit: int) -> list[Case]:
        """Cases in case_id order after `after` ("" from the start)."""
        rows = self._db.execute(
            _SELECT_CASE + " WHERE case_id > ? ORDER BY case_id LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Case(*r) for r in rows]

    @staticmethod
    def link_case_referral(db: sqlite3.Connection, case_id: str, referral_id: str) -> None:
        """Name a referral this agency sent as one of the case's (idempotent); a referral
        linked to another case raises sqlite3.IntegrityError (one case per referral: the
        caller asks `case_of_referral` first)."""
        db.execute(
            "INSERT INTO case_referrals (case_id, referral_id) VALUES (?, ?)"
            " ON CONFLICT (case_id, referral_id) DO NOTHING",
            (case_id, referral_id),
        )

    @staticmethod
    def case_of_referral(db: sqlite3.Connection, referral_id: str) -> str | None:
        """The case a referral this agency sent is linked to, or None."""
        row = db.execute(
            "SELECT case_id FROM case_referrals WHERE referral_id = ?", (referral_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def case_provider_pairs(
        db: sqlite3.Connection, case_id: str, agency: str
    ) -> list[tuple[str, str]]:
        """(referral id, recipient) of every pair `agency` sent under the case's referrals
        that is accepted or in progress and not sent under a consent `agency` withdrew since
        (its recipient erased it, PROTOCOL §8.5), by referral id and recipient."""
        rows = db.execute(
            "SELECT r.referral_id, r.counterpart FROM case_referrals c JOIN referrals r"
            " ON r.owner = ? AND r.referral_id = c.referral_id AND r.side = 'sender'"
            " WHERE c.case_id = ? AND r.state IN ('accepted', 'in_progress')"
            " AND NOT EXISTS (SELECT 1 FROM consents k WHERE k.receipt_id = r.consent_receipt_id"
            " AND k.withdrawn_at IS NOT NULL)"
            " ORDER BY r.referral_id, r.counterpart",
            (agency, case_id),
        ).fetchall()
        return [(str(a), str(b)) for a, b in rows]

    @staticmethod
    def insert_decision(db: sqlite3.Connection, d: StoredDecision) -> bool:
        """Store `d`; False (nothing written) if this agency holds that decision already."""
        cursor = db.execute(
            "INSERT INTO decisions (authority, decision_id, case_id, stage, outcome, owner,"
            " referral_id, signed, reason, salt, stored_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                d.authority,
                d.decision_id,
                d.case_id,
                d.stage,
                d.outcome,
                d.owner,
                d.referral_id,
                d.signed,
                d.reason,
                d.salt,
                d.stored_at,
            ),
        )
        return cursor.rowcount == 1

    def decisions_of_pair(self, owner: str, referral_id: str) -> list[StoredDecision]:
        """The decisions held under the pair (owner, referral_id), oldest first."""
        rows = self._db.execute(
            _SELECT_DECISION + " WHERE owner = ? AND referral_id = ?"
            " ORDER BY stored_at, decision_id",
            (owner, referral_id),
        ).fetchall()
        return [StoredDecision(*r) for r in rows]

    @staticmethod
    def case_of_pair(
        db: sqlite3.Connection, owner: str, referral_id: str, authority: str
    ) -> str | None:
        """The case_id of `authority`'s first decision held under the pair (owner,
        referral_id): the case the pair is bound to for that authority (PROTOCOL §8.7
        `other-case`), or None."""
        row = db.execute(
            "SELECT case_id FROM decisions WHERE owner = ? AND referral_id = ? AND authority = ?"
            " ORDER BY stored_at, decision_id LIMIT 1",
            (owner, referral_id, authority),
        ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def decision(db: sqlite3.Connection, authority: str, decision_id: str) -> StoredDecision | None:
        """`authority`'s decision `decision_id` held here, if any."""
        row = db.execute(
            _SELECT_DECISION + " WHERE authority = ? AND decision_id = ?", (authority, decision_id)
        ).fetchone()
        return None if row is None else StoredDecision(*row)

    @staticmethod
    def decisions_of_case(
        db: sqlite3.Connection, authority: str, case_id: str
    ) -> list[StoredDecision]:
        """The decisions of `authority`'s case `case_id` held here, oldest first."""
        rows = db.execute(
            _SELECT_DECISION + " WHERE authority = ? AND case_id = ?"
            " ORDER BY stored_at, decision_id",
            (authority, case_id),
        ).fetchall()
        return [StoredDecision(*r) for r in rows]


def _case_row(c: Case) -> tuple[object, ...]:
    return (
        c.case_id,
        c.owner,
        c.referral_id,
        c.state,
        c.age_route,
        c.opened_at,
        c.updated,
        c.left_reason,
    )
