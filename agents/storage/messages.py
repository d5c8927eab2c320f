"""Outbox, deliveries, inbox and resends (PROTOCOL.md §6): what travels on the bus."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from runtime import clock

from .db import Database

#: A message's overall status is the least advanced state among its recipients; a copy that
#: failed for good (agents/standing.py) outranks them all.
STATUS_ORDER = ("failed", "queued", "sent", "delivered")


@dataclass(frozen=True, slots=True)
class ResendCandidate:
    """An envelope this agency sent to a recipient that asked for a resend."""

    message_id: str
    kind: str
    referral_id: str | None
    created: int
    envelope: bytes


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    message_id: str
    recipient: str
    envelope: bytes
    attempts: int
    referral_id: str | None


@dataclass(frozen=True, slots=True)
class DeliveryState:
    recipient: str
    state: str
    sent_at: int | None
    delivered_at: int | None
    #: Why a `failed` copy can never be delivered (a reason code), else None.
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class Undelivered:
    """A copy not yet confirmed delivered, with its envelope (to read who signed it)."""

    message_id: str
    recipient: str
    state: str
    sent_at: int | None
    envelope: bytes
    kind: str
    referral_id: str | None


@dataclass(frozen=True, slots=True)
class OutgoingStatus:
    message_id: str
    kind: str
    created: int
    envelope_hash: str
    status: str
    deliveries: tuple[DeliveryState, ...]


@dataclass(frozen=True, slots=True)
class Received:
    seq: int
    message_id: str
    kind: str
    sender: str
    envelope_hash: str
    created: int
    received_at: int
    body: bytes | None
    referral_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A sealed envelope to commit to the outbox, with the recipients it goes to."""

    message_id: str
    kind: str
    created: int
    envelope_hash: str
    envelope: bytes
    recipients: Sequence[str]
    referral_id: str | None = None


class Messages(Database):
    """The outbox and its deliveries, the inbox, resend requests and restores."""

    # --- outbox ---------------------------------------------------------------------------

    def enqueue(self, message: OutgoingMessage, db: sqlite3.Connection | None = None) -> None:
        """Commit a sealed envelope and one queued delivery per recipient.

        Pass `db` to join a transaction the caller holds (a received message and its receipt
        are committed together).
        """
        if db is None:
            with self.transaction() as tx:
                self._enqueue(tx, message)
        else:
            self._enqueue(db, message)

    @staticmethod
    def _enqueue(db: sqlite3.Connection, m: OutgoingMessage) -> None:
        db.execute(
            "INSERT INTO outbox (message_id, referral_id, kind, created, envelope_hash, envelope)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (m.message_id, m.referral_id, m.kind, m.created, m.envelope_hash, m.envelope),
        )
        db.executemany(
            "INSERT INTO deliveries (message_id, recipient, state) VALUES (?, ?, 'queued')",
            [(m.message_id, r) for r in m.recipients],
        )

    def pending(self, limit: int) -> list[PendingDelivery]:
        rows = self._db.execute(
            "SELECT d.message_id, d.recipient, o.envelope, d.attempts, o.referral_id"
            " FROM deliveries d"
            " JOIN outbox o USING (message_id) WHERE d.state = 'queued'"
            " ORDER BY o.created, d.rowid LIMIT ?",
            (limit,),
        ).fetchall()
        return [PendingDelivery(*row) for row in rows]

    def pending_count(self) -> int:
        (n,) = self._db.execute(
            "SELECT (SELECT count(*) FROM deliveries WHERE state = 'queued')"
            " + (SELECT count(*) FROM audit_outbox WHERE state = 'queued' AND state != 'included')"
        ).fetchone()
        return int(n)

    def mark_sent_many(self, sent: Sequence[tuple[str, str, int]]) -> None:
        """`mark_sent` for several (message_id, recipient, stream_seq) in one transaction."""
        now = clock.now()
        self._execute_each(
            "UPDATE deliveries SET state = 'sent', stream_seq = ?, sent_at = ?"
            " WHERE message_id = ? AND recipient = ? AND state = 'queued'",
            [(seq, now, message_id, recipient) for message_id, recipient, seq in sent],
        )

    def mark_attempts(self, failed: Sequence[tuple[str, str]]) -> None:
        """Count one more failed publish of each (message id, recipient)."""
        self._execute_each(
            "UPDATE deliveries SET attempts = attempts + 1 WHERE message_id = ? AND recipient = ?",
            failed,
        )

    def mark_delivered(
        self, db: sqlite3.Connection, *, message_id: str, recipient: str, envelope_hash: str
    ) -> bool:
        """Record a delivery receipt. False if it names no envelope we sent to `recipient`."""
        row = db.execute(
            "SELECT o.envelope_hash FROM deliveries d JOIN outbox o USING (message_id)"
            " WHERE d.message_id = ? AND d.recipient = ?",
            (message_id, recipient),
        ).fetchone()
        if row is None or row[0] != envelope_hash:
            return False
        db.execute(
            "UPDATE deliveries SET state = 'delivered', delivered_at = coalesce(delivered_at, ?)"
            " WHERE message_id = ? AND recipient = ?",
            (clock.now(), message_id, recipient),
        )
        return True

    def outgoing(self, message_id: str) -> OutgoingStatus | None:
        row = self._db.execute(
            "SELECT kind, created, envelope_hash FROM outbox WHERE message_id = ?", (message_id,)
        ).fetchone()
        if row is None:
            return None
        deliveries = tuple(
            DeliveryState(*r)
            for r in self._db.execute(
                "SELECT recipient, state, sent_at, delivered_at, failure FROM deliveries"
                " WHERE message_id = ? ORDER BY recipient",
                (message_id,),
            )
        )
        status = min((d.state for d in deliveries), key=STATUS_ORDER.index)
        return OutgoingStatus(message_id, row[0], row[1], row[2], status, deliveries)

    @staticmethod
    def sent_referral(db: sqlite3.Connection, message_id: str) -> str | None:
        """The referral an envelope this agency sent was about, if any."""
        row = db.execute(
            "SELECT referral_id FROM outbox WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if row is None else row[0]

    # --- deliveries that can never succeed (agents/standing.py) ---------------------------

    def undelivered(self, *, states: Sequence[str] = ("queued", "sent")) -> list[Undelivered]:
        """Every copy in one of `states` (queued or sent, not yet confirmed delivered)."""
        marks = ",".join("?" * len(states))
        # Only placeholders are interpolated; every value is a bound parameter.
        query = (
            "SELECT d.message_id, d.recipient, d.state, d.sent_at, o.envelope, o.kind,"  # noqa: S608
            " o.referral_id FROM deliveries d JOIN outbox o USING (message_id)"
            f" WHERE d.state IN ({marks}) ORDER BY o.created, d.rowid"
        )
        rows = self._db.execute(
            query,
            tuple(states),
        ).fetchall()
        return [Undelivered(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], r[6]) for r in rows]

    def undelivered_copy(
        self, message_id: str, recipient: str, envelope_hash: str
    ) -> tuple[str, str | None] | None:
        """(kind, referral id) of the copy of `message_id` to `recipient` not yet delivered,
        if the envelope sent had `envelope_hash` (kept even once the envelope is dropped)."""
        row = self._db.execute(
            "SELECT o.kind, o.referral_id FROM deliveries d JOIN outbox o USING (message_id)"
            " WHERE d.message_id = ? AND d.recipient = ? AND o.envelope_hash = ?"
            " AND d.state IN ('queued', 'sent')",
            (message_id, recipient, envelope_hash),
        ).fetchone()
        return None if row is None else (str(row[0]), row[1])

    @staticmethod
    def fail_deliveries(db: sqlite3.Connection, failed: Sequence[tuple[str, str, str]]) -> int:
        """Mark (message id, recipient, reason) copies failed for good, in the caller's
        transaction, unless delivered meanwhile; how many were marked."""
        marked = 0
        for message_id, recipient, reason in failed:
            marked += db.execute(
                "UPDATE deliveries SET state = 'failed', failure = ?"
                " WHERE message_id = ? AND recipient = ? AND state IN ('queued', 'sent')",
                (reason, message_id, recipient),
            ).rowcount
        return marked

    def failed_count(self) -> int:
        (n,) = self._db.execute("SELECT count(*) FROM deliveries WHERE state = 'failed'").fetchone()
        return int(n)

    # --- inbox ----------------------------------------------------------------------------

    def received_position(self, message_id: str) -> tuple[str, int] | None:
        """The stream and the stream sequence a message id was first received at, if it was."""
        row = self._db.execute(
            "SELECT stream, stream_seq FROM inbox WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def insert_received(
        self, db: sqlite3.Connection, r: Received, *, stream: str, stream_seq: int
    ) -> None:
        db.execute(
            "INSERT INTO inbox (message_id, kind, sender, envelope_hash, stream, stream_seq,"
            " created, received_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.message_id,
                r.kind,
                r.sender,
                r.envelope_hash,
                stream,
                stream_seq,
                r.created,
                r.received_at,
                r.body,
            ),
        )

    def inbox_page(self, *, kind: str, after: int, limit: int) -> list[Received]:
        rows = self._db.execute(
            "SELECT seq, message_id, kind, sender, envelope_hash, created, received_at, body,"
            " referral_id FROM inbox WHERE kind = ? AND seq > ? ORDER BY seq LIMIT ?",
            (kind, after, limit),
        ).fetchall()
        return [Received(*row) for row in rows]

    @staticmethod
    def received_referral(db: sqlite3.Connection, message_id: str) -> str | None:
        """The referral a received envelope carried, if any."""
        row = db.execute(
            "SELECT referral_id FROM inbox WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def link_received_referral(
        db: sqlite3.Connection, message_id: str, referral_id: str, sealed: bytes
    ) -> None:
        """Keep a received referral's sealed body on its inbox row, linked to the referral."""
        db.execute(
            "UPDATE inbox SET body = ?, referral_id = ? WHERE message_id = ?",
            (sealed, referral_id, message_id),
        )

    def received_body(self, owner: str, referral_id: str) -> bytes | None:
        """The sealed body of the referral `owner` sent here, None if unknown or erased."""
        return self._blob(
            "SELECT body FROM inbox WHERE sender = ? AND referral_id = ? AND kind = 'referral'",
            (owner, referral_id),
        )

    # --- restores and resend requests (agents/resend.py, PROTOCOL.md §6.3) ------------------

    def record_agent_restore(self) -> None:
        """Note, in a database just put back from a backup, that resend requests are due."""
        with self.transaction() as tx:
            tx.execute("INSERT INTO agent_restores (restored_at) VALUES (?)", (clock.now(),))

    def pending_resend_requests(self) -> int | None:
        """The restore whose resend requests are not sent yet, if any."""
        row = self._db.execute(
            "SELECT max(seq) FROM agent_restores WHERE requests_sent IS NULL"
        ).fetchone()
        return None if row[0] is None else int(row[0])

    @staticmethod
    def mark_resend_requests_sent(db: sqlite3.Connection, seq: int) -> None:
        db.execute(
            "UPDATE agent_restores SET requests_sent = ? WHERE seq <= ? AND requests_sent IS NULL",
            (clock.now(), seq),
        )

    def resend_basis(self, sender: str, *, overlap: int, max_have: int) -> tuple[int, list[str]]:
        """(since, held ids) for a resend request to `sender`: from `overlap` seconds before
        the newest message held from it (0 if none), every id held from then on; if that is
        more than `max_have`, `since` moves up to keep the newest `max_have`."""
        (newest,) = self._db.execute(
            "SELECT max(created) FROM inbox WHERE sender = ?", (sender,)
        ).fetchone()
        if newest is None:
            return 0, []
        since = max(0, int(newest) - overlap)
        rows = self._db.execute(
            "SELECT message_id, created FROM inbox WHERE sender = ? AND created >= ?"
            " ORDER BY created DESC LIMIT ?",
            (sender, since, max_have + 1),
        ).fetchall()
        if len(rows) > max_have:
            rows = rows[:max_have]
            since = int(rows[-1][1])
        return since, sorted(str(r[0]) for r in rows)

    def resend_candidates(self, recipient: str, *, since: int, limit: int) -> list[ResendCandidate]:
        """Envelopes sent to `recipient` created at or after `since`, oldest first: those
        published (sent or delivered), not those still waiting, nor those failed for good
        (the agency system was told to submit them again), nor resend requests."""
        rows = self._db.execute(
            "SELECT o.message_id, o.kind, o.referral_id, o.created, o.envelope"
            " FROM deliveries d JOIN outbox o USING (message_id)"
            " WHERE d.recipient = ? AND o.created >= ? AND d.state IN ('sent', 'delivered')"
            " AND o.kind != 'resend-request' AND length(o.envelope) > 0"  # not erased or purged
            " ORDER BY o.created, d.rowid LIMIT ?",
            (recipient, since, limit),
        ).fetchall()
        return [ResendCandidate(r[0], r[1], r[2], int(r[3]), bytes(r[4])) for r in rows]

    def last_resend_honoured(self, requester: str) -> int | None:
        (at,) = self._db.execute(
            "SELECT max(honoured_at) FROM resend_requests WHERE requester = ?", (requester,)
        ).fetchone()
        return None if at is None else int(at)

    @staticmethod
    def requeue_for_resend(
        db: sqlite3.Connection, recipient: str, message_ids: Sequence[str], *, request_id: str
    ) -> None:
        """Queue the copies of `message_ids` for `recipient` again, to be published under a
        `Nats-Msg-Id` of their own (`resend_ids`), and record the request as honoured."""
        db.executemany(
            "UPDATE deliveries SET state = 'queued' WHERE message_id = ? AND recipient = ?",
            [(m, recipient) for m in message_ids],
        )
        db.executemany(
            "INSERT OR REPLACE INTO resends (message_id, recipient, request_id) VALUES (?, ?, ?)",
            [(m, recipient, request_id) for m in message_ids],
        )
        db.execute(
            "INSERT INTO resend_requests (request_id, requester, honoured_at, resent)"
            " VALUES (?, ?, ?, ?)",
            (request_id, recipient, clock.now(), len(message_ids)),
        )

    def resend_ids(self, copies: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """(message id, recipient) -> the resend request it is being sent again for."""
        if not copies or self._db.execute("SELECT 1 FROM resends LIMIT 1").fetchone() is None:
            return {}
        wanted = set(copies)
        found: dict[tuple[str, str], str] = {}
        for message_id in {m for m, _ in copies}:
            rows = self._db.execute(
                "SELECT recipient, request_id FROM resends WHERE message_id = ?", (message_id,)
            )
            for recipient, request_id in rows:
                if (message_id, recipient) in wanted:
                    found[(message_id, str(recipient))] = str(request_id)
        return found
