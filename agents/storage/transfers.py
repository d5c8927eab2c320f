"""Transfer requests (docs/PROTOCOL.md §8.10 "`transfer-request`").

`transfer_requests`: every request this agency sent (it is the `requester`) or accepted (it
is the `owner` asked), keyed by its requester and `request_id` as the protocol names it,
with the pair (owner, referral_id) it was asked under, the case and the HTCDS reason, its
state in the table "Transfer request" and the reason of the step that reached it (a refusal
reason, else NULL). `message_id` is the `transfer-request` envelope: at the requester its
delivery receipt moves the request from `requested` to `delivered`, and a copy of it failed
for good (the owner's agent refused it, §6.5, or it could not be delivered) is read as the
request's `failure`, from `deliveries`, not stored twice. Coded fields and ids
only. A new table: `CREATE TABLE IF NOT EXISTS` adds it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .db import Database


@dataclass(frozen=True, slots=True)
class StoredTransferRequest:
    """A transfer request as one of its two parties holds it."""

    requester: str
    request_id: str
    owner: str
    referral_id: str
    case_id: str | None
    reason: str
    at: int
    state: str
    step_reason: str | None
    message_id: str
    created: int
    updated: int
    #: at the requester, the reason its `transfer-request` copy failed for good, else None
    failure: str | None = None


_COLUMNS = (
    "t.requester, t.request_id, t.owner, t.referral_id, t.case_id, t.reason, t.at, t.state,"
    " t.step_reason, t.message_id, t.created, t.updated, d.failure FROM transfer_requests t"
    " LEFT JOIN deliveries d ON d.message_id = t.message_id AND d.recipient = t.owner"
    " AND d.state = 'failed'"
)
_SELECT = "SELECT " + _COLUMNS


class TransferRequests(Database):
    """`transfer_requests`."""

    @staticmethod
    def insert_transfer_request(db: sqlite3.Connection, r: StoredTransferRequest) -> bool:
        """Store `r`; False (nothing written) if its requester sent that request_id before."""
        cursor = db.execute(
            "INSERT INTO transfer_requests (requester, request_id, owner, referral_id, case_id,"
            " reason, at, state, step_reason, message_id, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                r.requester,
                r.request_id,
                r.owner,
                r.referral_id,
                r.case_id,
                r.reason,
                r.at,
                r.state,
                r.step_reason,
                r.message_id,
                r.created,
                r.updated,
            ),
        )
        return cursor.rowcount == 1

    @staticmethod
    def transfer_request(
        db: sqlite3.Connection, requester: str, request_id: str
    ) -> StoredTransferRequest | None:
        """The request `request_id` of `requester`, if held."""
        row = db.execute(
            _SELECT + " WHERE t.requester = ? AND t.request_id = ?", (requester, request_id)
        ).fetchone()
        return None if row is None else StoredTransferRequest(*row)

    def transfer_requests_named(self, request_id: str) -> list[StoredTransferRequest]:
        """Every request of that id, whoever asked (ids are each requester's), oldest first."""
        rows = self._db.execute(
            _SELECT + " WHERE t.request_id = ? ORDER BY t.seq", (request_id,)
        ).fetchall()
        return [StoredTransferRequest(*r) for r in rows]

    def transfer_requests_page(
        self, *, after: int, limit: int
    ) -> list[tuple[int, StoredTransferRequest]]:
        """(seq, request) of the requests stored after `after`, oldest first."""
        rows = self._db.execute(
            "SELECT t.seq, " + _COLUMNS + " WHERE t.seq > ? ORDER BY t.seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [(int(r[0]), StoredTransferRequest(*r[1:])) for r in rows]

    @staticmethod
    def transfer_request_of_message(
        db: sqlite3.Connection, message_id: str, owner: str
    ) -> StoredTransferRequest | None:
        """The request this agency sent to `owner` in the envelope `message_id`, if any."""
        row = db.execute(
            _SELECT + " WHERE t.message_id = ? AND t.owner = ?", (message_id, owner)
        ).fetchone()
        return None if row is None else StoredTransferRequest(*row)

    @staticmethod
    def step_transfer_request(
        db: sqlite3.Connection,
        requester: str,
        request_id: str,
        *,
        from_state: str,
        to_state: str,
        reason: str | None,
        now: int,
    ) -> bool:
        """Move the request from `from_state` to `to_state` (with the step's reason); False,
        nothing written, if it is not in `from_state` any more."""
        cursor = db.execute(
            "UPDATE transfer_requests SET state = ?, step_reason = ?, updated = ?"
            " WHERE requester = ? AND request_id = ? AND state = ?",
            (to_state, reason, now, requester, request_id, from_state),
        )
        return cursor.rowcount == 1
