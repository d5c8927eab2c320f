"""Reconsideration requests (docs/PROTOCOL.md §8.7 "Reconsideration requests").

`reconsideration_requests`: at a competent authority, every request it accepted, keyed by
its requester and `request_id`, naming the decision and case it is about, the pair it was
asked under, the ground and when. Coded fields and ids only. `answered_by` is null while
the request is pending, then the id of the decision that answered it (superseding the one
asked about); a refusal answer is not built yet. `ended_by` is the case's step that ended
a pending request unanswered (`left_process`: the person left while it was pending), NULL
otherwise; a request is pending while both are NULL (PROTOCOL §8.7 "Leaving the process
and closing").
A new table: `CREATE TABLE IF NOT EXISTS` adds it; migration 5 adds `ended_by`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .db import Database


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """A reconsideration request as the authority holds it."""

    requester: str
    request_id: str
    case_id: str
    decision_id: str
    stage: str
    ground: str
    owner: str
    referral_id: str
    at: int
    received_at: int
    answered_by: str | None = None
    ended_by: str | None = None

    @property
    def pending(self) -> bool:
        return self.answered_by is None and self.ended_by is None


_SELECT = (
    "SELECT requester, request_id, case_id, decision_id, stage, ground, owner, referral_id,"
    " at, received_at, answered_by, ended_by FROM reconsideration_requests"
)


class Reconsiderations(Database):
    """`reconsideration_requests`."""

    @staticmethod
    def insert_request(db: sqlite3.Connection, r: StoredRequest) -> bool:
        """Store `r`; False (nothing written) if its requester sent that request_id before."""
        cursor = db.execute(
            "INSERT INTO reconsideration_requests (requester, request_id, case_id, decision_id,"
            " stage, ground, owner, referral_id, at, received_at, answered_by, ended_by)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                r.requester,
                r.request_id,
                r.case_id,
                r.decision_id,
                r.stage,
                r.ground,
                r.owner,
                r.referral_id,
                r.at,
                r.received_at,
                r.answered_by,
                r.ended_by,
            ),
        )
        return cursor.rowcount == 1

    @staticmethod
    def answer_requests(db: sqlite3.Connection, case_id: str, answered_by: str) -> None:
        """Mark the case's pending requests answered by `answered_by` (a decision's id)."""
        db.execute(
            "UPDATE reconsideration_requests SET answered_by = ?"
            " WHERE case_id = ? AND answered_by IS NULL AND ended_by IS NULL",
            (answered_by, case_id),
        )

    @staticmethod
    def end_requests(db: sqlite3.Connection, case_id: str, ended_by: str) -> int:
        """Mark the case's pending requests ended unanswered by the case's step `ended_by`;
        how many were pending."""
        cursor = db.execute(
            "UPDATE reconsideration_requests SET ended_by = ?"
            " WHERE case_id = ? AND answered_by IS NULL AND ended_by IS NULL",
            (ended_by, case_id),
        )
        return cursor.rowcount

    @staticmethod
    def requests_of_case(db: sqlite3.Connection, case_id: str) -> list[StoredRequest]:
        """The requests about the case, oldest first."""
        rows = db.execute(_SELECT + " WHERE case_id = ? ORDER BY seq", (case_id,)).fetchall()
        return [StoredRequest(*r) for r in rows]
