"""Transfer requests and case transfers (docs/PROTOCOL.md §8.10 "`transfer-request`",
"`case-transfer`").

`transfer_requests`: every request this agency sent (it is the `requester`) or accepted (it
is the `owner` asked), keyed by its requester and `request_id` as the protocol names it,
with the pair (owner, referral_id) it was asked under, the case and the HTCDS reason, its
state in the table "Transfer request" and the reason of the step that reached it (a refusal
reason, else NULL). `message_id` is the `transfer-request` envelope: at the requester its
delivery receipt moves the request from `requested` to `delivered`, and a copy of it failed
for good (the owner's agent refused it, §6.5, or it could not be delivered) is read as the
request's `failure`, from `deliveries`, not stored twice. Coded fields and ids
only. A new table: `CREATE TABLE IF NOT EXISTS` adds it.

`case_transfers`: every transfer this agency proposed (it is the `owner`) or received (it is
the `transferee`), keyed by its owner and `transfer_id`, with R's `referral_id` and
`urgency`, the case (at the owner with its `authority`: a case is named by both), the HTCDS
reason, the request it answers, its state in the table "Case
transfer" and the reason of the step that reached it. At the transferee `body` is R, sealed
under its own data key in `data_keys` (owner: the transferee itself, for R is its own record,
PROTOCOL §8.10 "Decisions"), and nowhere else (the inbox keeps no `case-transfer` body);
erasure and retention delete the key and set `body` to NULL (agents/storage/erasure.py
`erase_transferred_referral`). The owner keeps no copy of R, only what a subject access
report names of it (`categories`, `referral_type`, `legal_basis`, `consent_receipt_id`;
NULL at the transferee). Ids and codes only in every other column. `message_id` is the
`case-transfer` envelope, whose delivery receipt moves the owner's copy to `delivered` and
whose failed copy is read as the transfer's `failure`, as for requests; `sent_at` its
`created`, from which each side's timer expires the transfer; `told`, at the owner of a
transfer naming a case, the `case-owner-changed` envelope it sent the authority, whose
delivery receipt lets the transfer complete.

`case_owners`: at a competent authority, the current owner of each case a
`case-owner-changed` moved (the case's referrer owns it until then), with the transfer and
the owner that told it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .db import Database
from .referrals import SentCopy, sent_copy


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


def _step(
    db: sqlite3.Connection,
    table: str,
    key: tuple[str, str],
    *,
    from_state: str,
    to_state: str,
    reason: str | None,
    now: int,
) -> bool:
    """Move the row of `table` named by `key` (its sender, its id) from `from_state` to
    `to_state` with the step's reason; False, nothing written, if it is in `from_state` no
    more. `table` is one of this module's two, never input."""
    party = {"transfer_requests": "requester", "case_transfers": "owner"}[table]
    ident = {"transfer_requests": "request_id", "case_transfers": "transfer_id"}[table]
    cursor = db.execute(
        f"UPDATE {table} SET state = ?, step_reason = ?, updated = ?"  # noqa: S608
        f" WHERE {party} = ? AND {ident} = ? AND state = ?",
        (to_state, reason, now, *key, from_state),
    )
    return cursor.rowcount == 1


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
        return _step(
            db,
            "transfer_requests",
            (requester, request_id),
            from_state=from_state,
            to_state=to_state,
            reason=reason,
            now=now,
        )


@dataclass(frozen=True, slots=True)
class StoredTransfer:
    """A case transfer as one of its two parties holds it."""

    owner: str
    transfer_id: str
    transferee: str
    referral_id: str
    case_id: str | None
    #: at the owner of a transfer naming a case, the case's competent authority (a case is
    #: named by (authority, case_id): each authority chooses its ids), else None
    authority: str | None
    reason: str
    request_id: str | None
    urgency: str
    state: str
    step_reason: str | None
    message_id: str
    #: the `case-transfer` envelope's `created`, from which both sides run its expiry
    sent_at: int
    created: int
    updated: int
    #: at the owner, the reason its `case-transfer` copy failed for good, else None
    failure: str | None = None
    #: at the owner of a transfer naming a case, the reason its `case-owner-changed` could
    #: not be sealed or failed for good (the authority's agent refused it), else None
    authority_failure: str | None = None


_TRANSFER_COLUMNS = (
    "t.owner, t.transfer_id, t.transferee, t.referral_id, t.case_id, t.authority, t.reason,"
    " t.request_id,"
    " t.urgency, t.state, t.step_reason, t.message_id, t.sent_at, t.created, t.updated,"
    " d.failure, coalesce(t.told_failure, a.failure)"
    " FROM case_transfers t LEFT JOIN deliveries d ON d.message_id = t.message_id"
    " AND d.recipient = t.transferee AND d.state = 'failed'"
    " LEFT JOIN deliveries a ON a.message_id = t.told AND a.recipient = t.authority"
    " AND a.state = 'failed'"
)
_SELECT_TRANSFER = "SELECT " + _TRANSFER_COLUMNS


class CaseTransfers(Database):
    """`case_transfers`."""

    @staticmethod
    def insert_transfer(db: sqlite3.Connection, t: StoredTransfer, body: bytes | None) -> bool:
        """Store `t` (and, at the transferee, R sealed); False (nothing written) if its owner
        sent that transfer_id before."""
        cursor = db.execute(
            "INSERT INTO case_transfers (owner, transfer_id, transferee, referral_id, case_id,"
            " authority, reason, request_id, urgency, state, step_reason, message_id, sent_at,"
            " body, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (
                t.owner,
                t.transfer_id,
                t.transferee,
                t.referral_id,
                t.case_id,
                t.authority,
                t.reason,
                t.request_id,
                t.urgency,
                t.state,
                t.step_reason,
                t.message_id,
                t.sent_at,
                body,
                t.created,
                t.updated,
            ),
        )
        return cursor.rowcount == 1

    @staticmethod
    def transfer(db: sqlite3.Connection, owner: str, transfer_id: str) -> StoredTransfer | None:
        """The transfer `transfer_id` of `owner`, if held."""
        row = db.execute(
            _SELECT_TRANSFER + " WHERE t.owner = ? AND t.transfer_id = ?", (owner, transfer_id)
        ).fetchone()
        return None if row is None else StoredTransfer(*row)

    def transfers_named(self, transfer_id: str) -> list[StoredTransfer]:
        """Every transfer of that id, whoever proposed it (ids are each owner's), oldest
        first."""
        rows = self._db.execute(
            _SELECT_TRANSFER + " WHERE t.transfer_id = ? ORDER BY t.seq", (transfer_id,)
        ).fetchall()
        return [StoredTransfer(*r) for r in rows]

    def transfers_page(self, *, after: int, limit: int) -> list[tuple[int, StoredTransfer]]:
        """(seq, transfer) of the transfers stored after `after`, oldest first."""
        rows = self._db.execute(
            "SELECT t.seq, " + _TRANSFER_COLUMNS + " WHERE t.seq > ? ORDER BY t.seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [(int(r[0]), StoredTransfer(*r[1:])) for r in rows]

    @staticmethod
    def record_sent_r(
        db: sqlite3.Connection,
        transfer_id: str,
        *,
        owner: str,
        categories: frozenset[str],
        referral_type: str,
        legal_basis: str,
        consent_receipt_id: str | None,
    ) -> None:
        """At the owner: what R carried to the transferee, for subject access."""
        db.execute(
            "UPDATE case_transfers SET categories = ?, referral_type = ?, legal_basis = ?,"
            " consent_receipt_id = ? WHERE owner = ? AND transfer_id = ?",
            (
                ",".join(sorted(categories)),
                referral_type,
                legal_basis,
                consent_receipt_id,
                owner,
                transfer_id,
            ),
        )

    def transferred_copies(self, owner: str, referral_id: str) -> list[SentCopy]:
        """The copy of R `referral_id` this agency (`owner`) sent its transferee, as a
        subject access report shows a referral's copy: the transfer's state, the
        `case-transfer` envelope's times, the consent R cited and its use by the transferee."""
        rows = self._db.execute(
            "SELECT t.transferee, t.state, t.categories, t.referral_type, t.urgency,"
            " t.legal_basis, t.created, d.sent_at, d.delivered_at, c.withdrawn_at,"
            " u.confirmed_at FROM case_transfers t"
            " LEFT JOIN deliveries d ON d.message_id = t.message_id AND d.recipient = t.transferee"
            " LEFT JOIN consents c ON c.receipt_id = t.consent_receipt_id"
            " LEFT JOIN consent_uses u ON u.receipt_id = t.consent_receipt_id"
            " AND u.agency = t.transferee AND u.referral_id = t.referral_id"
            " WHERE t.owner = ? AND t.referral_id = ? AND t.referral_type IS NOT NULL"
            " ORDER BY t.transferee",
            (owner, referral_id),
        ).fetchall()
        return [sent_copy(r) for r in rows]

    @staticmethod
    def transfer_body(db: sqlite3.Connection, owner: str, transfer_id: str) -> bytes | None:
        """R as the transferee holds it, sealed (None at the owner)."""
        row = db.execute(
            "SELECT body FROM case_transfers WHERE owner = ? AND transfer_id = ?",
            (owner, transfer_id),
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def received_transfer_of(
        self, db: sqlite3.Connection, owner: str, referral_id: str
    ) -> StoredTransfer | None:
        """The transfer `owner` sent this agency (its transferee) with R of `referral_id`."""
        row = db.execute(
            _SELECT_TRANSFER + " WHERE t.owner = ? AND t.referral_id = ? AND t.transferee = ?",
            (owner, referral_id, self.agency),
        ).fetchone()
        return None if row is None else StoredTransfer(*row)

    @staticmethod
    def transfer_of_message(
        db: sqlite3.Connection, message_id: str, transferee: str
    ) -> StoredTransfer | None:
        """The transfer this agency sent to `transferee` in the envelope `message_id`."""
        row = db.execute(
            _SELECT_TRANSFER + " WHERE t.message_id = ? AND t.transferee = ?",
            (message_id, transferee),
        ).fetchone()
        return None if row is None else StoredTransfer(*row)

    def open_transfers(self) -> list[StoredTransfer]:
        """The transfers held `proposed` or `delivered` (those a timer may expire), oldest
        first."""
        rows = self._db.execute(
            _SELECT_TRANSFER + " WHERE t.state IN ('proposed', 'delivered') ORDER BY t.seq"
        ).fetchall()
        return [StoredTransfer(*r) for r in rows]

    @staticmethod
    def envelope_created(db: sqlite3.Connection, message_id: str) -> int:
        """The `created` of the envelope this agency sealed as `message_id`."""
        row = db.execute("SELECT created FROM outbox WHERE message_id = ?", (message_id,))
        found = row.fetchone()
        if found is None:
            raise LookupError("no envelope sealed under this message id")
        return int(found[0])

    @staticmethod
    def set_told(db: sqlite3.Connection, owner: str, transfer_id: str, message_id: str) -> None:
        """The `case-owner-changed` this agency sent the authority of the transfer's case."""
        db.execute(
            "UPDATE case_transfers SET told = ? WHERE owner = ? AND transfer_id = ?",
            (message_id, owner, transfer_id),
        )

    @staticmethod
    def set_told_failure(db: sqlite3.Connection, owner: str, transfer_id: str, reason: str) -> None:
        """The `case-owner-changed` to the authority could not be sealed, for `reason`."""
        db.execute(
            "UPDATE case_transfers SET told_failure = ? WHERE owner = ? AND transfer_id = ?",
            (reason, owner, transfer_id),
        )

    @staticmethod
    def authority_told(db: sqlite3.Connection, owner: str, transfer_id: str) -> bool:
        """Whether the authority's delivery receipt of that `case-owner-changed` came."""
        row = db.execute(
            "SELECT 1 FROM case_transfers t JOIN deliveries d ON d.message_id = t.told"
            " WHERE t.owner = ? AND t.transfer_id = ? AND d.state = 'delivered'",
            (owner, transfer_id),
        ).fetchone()
        return row is not None

    def case_transfer_held(
        self, db: sqlite3.Connection, authority: str, case_id: str
    ) -> str | None:
        """The state of a transfer of `authority`'s case `case_id` this agency proposed that
        is open (`proposed`, `delivered`, `accepted`) or `completed`, if any: it may propose
        none other of the case (it owns the case no more, or one is under way)."""
        row = db.execute(
            "SELECT state FROM case_transfers WHERE owner = ? AND authority = ? AND case_id = ?"
            " AND state IN ('proposed', 'delivered', 'accepted', 'completed')"
            " ORDER BY state = 'completed' DESC LIMIT 1",
            (self.agency, authority, case_id),
        ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def case_owner(db: sqlite3.Connection, case_id: str) -> str | None:
        """At the authority: the current owner of its case `case_id` (a transferee, or the
        referrer whose referral opened it), None for no such case."""
        row = db.execute(
            "SELECT coalesce(o.owner, c.owner) FROM cases c"
            " LEFT JOIN case_owners o ON o.case_id = c.case_id WHERE c.case_id = ?",
            (case_id,),
        ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def change_case_owner(
        db: sqlite3.Connection,
        case_id: str,
        *,
        owner: str,
        transfer_id: str,
        changed_by: str,
        at: int,
        now: int,
    ) -> None:
        """At the authority: `owner` owns the case from now on (told by `changed_by`)."""
        db.execute(
            "INSERT INTO case_owners (case_id, owner, transfer_id, changed_by, at, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (case_id) DO UPDATE SET owner = excluded.owner,"
            " transfer_id = excluded.transfer_id, changed_by = excluded.changed_by,"
            " at = excluded.at, received_at = excluded.received_at",
            (case_id, owner, transfer_id, changed_by, at, now),
        )

    def case_pairs(self, db: sqlite3.Connection, authority: str, case_id: str) -> list[str]:
        """The referral ids of this agency's own pairs under which it holds decisions or
        notices of `authority`'s case `case_id` (the pairs of the case an owner ends on a
        transfer)."""
        rows = db.execute(
            "SELECT referral_id FROM decisions WHERE authority = ? AND case_id = ? AND owner = ?"
            " UNION SELECT referral_id FROM protection_notices"
            " WHERE authority = ? AND case_id = ? AND owner = ?",
            (authority, case_id, self.agency, authority, case_id, self.agency),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def case_authorities(self, db: sqlite3.Connection, case_id: str) -> list[str]:
        """The authorities of which this agency holds a decision or a protection notice of a
        case `case_id` under a pair of its own (so as the case's referrer, its owner: a
        coordinator or a provider holds them under another's pair; a transfer names only
        such a case, PROTOCOL §8.10), sorted: several when authorities chose the same id (a
        hostile one may)."""
        rows = db.execute(
            "SELECT authority FROM decisions WHERE case_id = ? AND owner = ?"
            " UNION SELECT authority FROM protection_notices WHERE case_id = ? AND owner = ?"
            " ORDER BY 1",
            (case_id, self.agency, case_id, self.agency),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def transfer_referral_held(self, db: sqlite3.Connection, referral_id: str) -> bool:
        """Whether a transfer received here already carried an R of that id (R is the
        transferee's own record: its id names one record only), erased since or not: the
        row outlives R's body, and so does the id."""
        row = db.execute(
            "SELECT 1 FROM case_transfers WHERE referral_id = ? AND transferee = ?",
            (referral_id, self.agency),
        ).fetchone()
        return row is not None

    @staticmethod
    def request_answered(db: sqlite3.Connection, owner: str, request_id: str) -> bool:
        """Whether a transfer from `owner` held here answers this agency's request
        `request_id` (one transfer per request)."""
        row = db.execute(
            "SELECT 1 FROM case_transfers WHERE owner = ? AND request_id = ?",
            (owner, request_id),
        ).fetchone()
        return row is not None

    def transfer_referral_from(self, db: sqlite3.Connection, owner: str, referral_id: str) -> bool:
        """Whether `owner` sent this agency a transfer whose R has that id (its attachments
        are held under (owner, referral_id), which no referral of `owner`'s may share), R
        erased since or not."""
        row = db.execute(
            "SELECT 1 FROM case_transfers WHERE owner = ? AND referral_id = ? AND transferee = ?",
            (owner, referral_id, self.agency),
        ).fetchone()
        return row is not None

    @staticmethod
    def step_transfer(
        db: sqlite3.Connection,
        owner: str,
        transfer_id: str,
        *,
        from_state: str,
        to_state: str,
        reason: str | None,
        now: int,
    ) -> bool:
        """Move the transfer from `from_state` to `to_state` (with the step's reason);
        False, nothing written, if it is not in `from_state` any more."""
        return _step(
            db,
            "case_transfers",
            (owner, transfer_id),
            from_state=from_state,
            to_state=to_state,
            reason=reason,
            now=now,
        )
