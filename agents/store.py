"""The agent's durable state: one SQLite database in WAL mode.

Commits are made durable by group commit (runtime.durability): callers await `durable()` before
anything they committed is announced outside the process.

- `outbox`: every envelope this agency sealed (referrals and receipts), committed before the
  API answers; `deliveries` tracks each copy per recipient until the bus acknowledges it and
  until the recipient's delivery receipt comes back.
- `inbox`: every envelope received, keyed by message id, committed before the JetStream ack;
  the unique key is what makes the agent store a message at most once.
- `signing_key_history`: every signing key window any accepted directory listed
  (keys.key_history), so what an agency signed stays verifiable after its keys rotate, are
  pruned from the directory, or the agency is removed and re-admitted. Added by issue 10;
  `CREATE TABLE IF NOT EXISTS` adds it to databases made before, and consents stored before
  it hold no key id (consent.verify_stored_receipt finds theirs).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keys.directory import Directory
from keys.key_history import KeyWindow, merge
from runtime import clock
from runtime.durability import BACKSTOP_PAGES, CHECKPOINT_BYTES, GroupCommit

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    message_id    TEXT PRIMARY KEY,
    referral_id   TEXT,
    kind          TEXT NOT NULL,
    created       INTEGER NOT NULL,
    envelope_hash TEXT NOT NULL,
    envelope      BLOB NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS deliveries (
    message_id    TEXT NOT NULL REFERENCES outbox(message_id),
    recipient     TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'delivered', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    stream_seq    INTEGER,
    sent_at       INTEGER,
    delivered_at  INTEGER,
    failure       TEXT,
    PRIMARY KEY (message_id, recipient)
) STRICT;
CREATE INDEX IF NOT EXISTS deliveries_queued ON deliveries(state) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS deliveries_failed ON deliveries(state) WHERE state = 'failed';
CREATE TABLE IF NOT EXISTS inbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    TEXT NOT NULL UNIQUE,
    referral_id   TEXT,
    kind          TEXT NOT NULL,
    sender        TEXT NOT NULL,
    envelope_hash TEXT NOT NULL,
    stream_seq    INTEGER NOT NULL,
    created       INTEGER NOT NULL,
    received_at   INTEGER NOT NULL,
    body          BLOB
) STRICT;
CREATE INDEX IF NOT EXISTS inbox_kind ON inbox(kind, seq);
CREATE INDEX IF NOT EXISTS inbox_referral ON inbox(referral_id);
CREATE TABLE IF NOT EXISTS audit_outbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT NOT NULL UNIQUE,
    event         BLOB NOT NULL,
    created       INTEGER NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'included')),
    stream_seq    INTEGER,
    ledger_index  INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS audit_unfinished ON audit_outbox(state) WHERE state != 'included';
CREATE TABLE IF NOT EXISTS referrals (
    referral_id        TEXT NOT NULL,
    counterpart        TEXT NOT NULL,
    side               TEXT NOT NULL CHECK (side IN ('sender', 'recipient')),
    state              TEXT NOT NULL,
    referral_type      TEXT NOT NULL,
    urgency            TEXT NOT NULL,
    legal_basis        TEXT NOT NULL,
    consent_receipt_id TEXT,
    message_id         TEXT NOT NULL,
    created            INTEGER NOT NULL,
    updated            INTEGER NOT NULL,
    escalated_at       INTEGER,
    expires            INTEGER,
    PRIMARY KEY (referral_id, counterpart)
) STRICT;
CREATE INDEX IF NOT EXISTS referrals_updated ON referrals(updated);
CREATE INDEX IF NOT EXISTS referrals_message ON referrals(message_id);
CREATE INDEX IF NOT EXISTS referrals_expiring ON referrals(expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS referrals_escalating ON referrals(created)
    WHERE side = 'sender' AND escalated_at IS NULL AND state IN ('submitted', 'delivered')
    AND urgency IN ('urgent', 'emergency');
CREATE TABLE IF NOT EXISTS history (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    referral_id  TEXT NOT NULL,
    counterpart  TEXT NOT NULL,
    from_state   TEXT,
    to_state     TEXT NOT NULL,
    party        TEXT NOT NULL,
    reason       TEXT,
    outcome      TEXT,
    at           INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS history_referral ON history(referral_id);
CREATE TABLE IF NOT EXISTS data_keys (
    referral_id TEXT PRIMARY KEY,
    sealed_key  BLOB
) STRICT;
CREATE TABLE IF NOT EXISTS consents (
    receipt_id   TEXT PRIMARY KEY,
    signed       BLOB NOT NULL,
    recorded     INTEGER NOT NULL,
    withdrawn_at INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS consent_uses (
    receipt_id   TEXT NOT NULL,
    agency       TEXT NOT NULL,
    referral_id  TEXT NOT NULL,
    confirmed_at INTEGER,
    PRIMARY KEY (receipt_id, agency, referral_id)
) STRICT;
CREATE TABLE IF NOT EXISTS signing_key_history (
    agency         TEXT NOT NULL,
    kid            TEXT NOT NULL,
    valid_from     INTEGER NOT NULL,
    public         BLOB NOT NULL,
    valid_until    INTEGER,
    revoked_at     INTEGER,
    listed_version INTEGER NOT NULL,
    delisted_at    INTEGER,
    PRIMARY KEY (agency, kid, valid_from)
) STRICT;
CREATE TABLE IF NOT EXISTS ledger_alerts (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    reason          TEXT NOT NULL,
    event_id        TEXT,
    first_at        INTEGER NOT NULL,
    last_at         INTEGER NOT NULL,
    occurrences     INTEGER NOT NULL DEFAULT 1,
    acknowledged_at INTEGER
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS ledger_alerts_open
    ON ledger_alerts(reason, coalesce(event_id, '')) WHERE acknowledged_at IS NULL;
CREATE INDEX IF NOT EXISTS ledger_alerts_event ON ledger_alerts(event_id);
CREATE TABLE IF NOT EXISTS idempotency (
    client       TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status       INTEGER NOT NULL,
    response     BLOB NOT NULL,
    created      INTEGER NOT NULL,
    PRIMARY KEY (client, key)
) STRICT;
CREATE TABLE IF NOT EXISTS ledger_restores (
    seq           INTEGER PRIMARY KEY,
    restored_size INTEGER NOT NULL,
    applied_at    INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS audit_reoffers (
    event_id TEXT PRIMARY KEY,
    seq      INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS agent_restores (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    restored_at   INTEGER NOT NULL,
    requests_sent INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS resends (
    message_id TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    request_id TEXT NOT NULL,
    PRIMARY KEY (message_id, recipient)
) STRICT;
CREATE TABLE IF NOT EXISTS resend_requests (
    request_id  TEXT PRIMARY KEY,
    requester   TEXT NOT NULL,
    honoured_at INTEGER NOT NULL,
    resent      INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS resend_requests_by ON resend_requests(requester, honoured_at);
"""

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


class Store:
    """Owns the SQLite connection. All methods are short transactions."""

    def __init__(self, path: Path, *, checkpoint_bytes: int = CHECKPOINT_BYTES) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # plus durable(): group commit
        self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        # Erased rows are overwritten, not just unlinked (crypto-shredding, issue 4).
        self._db.execute("PRAGMA secure_delete=ON")
        self._migrate_deliveries()
        self._db.executescript(SCHEMA)
        self._savepoints = 0
        path.chmod(0o600)
        self._group = GroupCommit(path, checkpoint_bytes=checkpoint_bytes)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception. Inside another
        transaction it is a savepoint, so callers compose into one atomic commit."""
        if self._db.in_transaction:
            self._savepoints += 1
            name = f"nested_{self._savepoints}"
            self._db.execute(f"SAVEPOINT {name}")
            try:
                yield self._db
            except BaseException:
                self._db.execute(f"ROLLBACK TO {name}")
                self._db.execute(f"RELEASE {name}")
                raise
            self._db.execute(f"RELEASE {name}")
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # also when COMMIT itself failed (disk full, I/O)
                self._db.execute("ROLLBACK")
            raise
        self._group.committed()

    async def durable(self) -> None:
        """Return once every transaction committed before this call is on disk."""
        await self._group.durable()

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
        if not sent:
            return
        now = clock.now()
        with self.transaction() as tx:
            tx.executemany(
                "UPDATE deliveries SET state = 'sent', stream_seq = ?, sent_at = ?"
                " WHERE message_id = ? AND recipient = ? AND state = 'queued'",
                [(seq, now, message_id, recipient) for message_id, recipient, seq in sent],
            )

    def mark_attempts(self, failed: Sequence[tuple[str, str]]) -> None:
        """Count one more failed publish of each (message id, recipient)."""
        if not failed:
            return
        with self.transaction() as tx:
            tx.executemany(
                "UPDATE deliveries SET attempts = attempts + 1"
                " WHERE message_id = ? AND recipient = ?",
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

    # --- audit events ---------------------------------------------------------------------

    @staticmethod
    def record_audit(db: sqlite3.Connection, event_id: str, event: bytes, created: int) -> None:
        """Queue a signed audit event in the caller's transaction (it commits with the
        action it describes, or not at all)."""
        db.execute(
            "INSERT INTO audit_outbox (event_id, event, created, state) VALUES (?, ?, ?, 'queued')",
            (event_id, event, created),
        )

    def pending_audit(self, limit: int) -> list[tuple[str, bytes]]:
        rows = self._db.execute(
            "SELECT event_id, event FROM audit_outbox WHERE state = 'queued'"
            " AND state != 'included' ORDER BY seq LIMIT ?",  # the term lets audit_unfinished serve
            (limit,),
        ).fetchall()
        return [(str(r[0]), bytes(r[1])) for r in rows]

    def mark_audit_sent_many(self, sent: Sequence[tuple[str, int]]) -> None:
        """`mark_audit_sent` for several (event_id, stream_seq) in one transaction."""
        if not sent:
            return
        with self.transaction() as tx:
            tx.executemany(
                "UPDATE audit_outbox SET state = 'sent', stream_seq = ? "
                "WHERE event_id = ? AND state = 'queued'",
                [(seq, event_id) for event_id, seq in sent],
            )

    def unconfirmed_audit(self, limit: int) -> list[tuple[str, bytes, int]]:
        """Events published but not yet proven included in the ledger: (id, event, created)."""
        rows = self._db.execute(
            "SELECT event_id, event, created FROM audit_outbox WHERE state = 'sent' "
            "AND state != 'included' AND event_id NOT IN (SELECT event_id FROM ledger_alerts"
            " WHERE acknowledged_at IS NOT NULL AND event_id IS NOT NULL)"  # given up on
            " ORDER BY seq LIMIT ?",  # uses audit_unfinished
            (limit,),
        ).fetchall()
        return [(str(r[0]), bytes(r[1]), int(r[2])) for r in rows]

    def mark_audit_included(self, included: Sequence[tuple[str, int]]) -> None:
        """Record (event id, ledger index) pairs whose inclusion was verified."""
        if not included:
            return
        with self.transaction() as tx:
            tx.executemany(
                "UPDATE audit_outbox SET state = 'included', ledger_index = ? WHERE event_id = ?",
                [(index, event_id) for event_id, index in included],
            )

    def reoffer_audit_after_restore(self, *, seq: int, restored_size: int) -> int | None:
        """Accept ledger restore `seq` (PROTOCOL.md §9.4) once: queue again for publishing
        every event not proven to be in the restored tree (included at an index at or past
        `restored_size`, or published and not yet proven). Returns how many, or None if this
        restore was already accepted."""
        with self.transaction() as tx:
            seen = tx.execute("SELECT 1 FROM ledger_restores WHERE seq = ?", (seq,)).fetchone()
            if seen is not None:
                return None
            tx.execute(
                "INSERT OR REPLACE INTO audit_reoffers (event_id, seq) SELECT event_id, ?"
                " FROM audit_outbox WHERE state = 'sent' OR"
                " (state = 'included' AND ledger_index >= ?)",
                (seq, restored_size),
            )
            count = tx.execute(
                "UPDATE audit_outbox SET state = 'queued', stream_seq = NULL, ledger_index = NULL"
                " WHERE state = 'sent' OR (state = 'included' AND ledger_index >= ?)",
                (restored_size,),
            ).rowcount
            tx.execute(
                "INSERT INTO ledger_restores (seq, restored_size, applied_at) VALUES (?, ?, ?)",
                (seq, restored_size, clock.now()),
            )
        return int(count)

    def reoffered(self, event_ids: Sequence[str]) -> dict[str, int]:
        """event id -> restore seq, for those of `event_ids` re-offered after a restore (they
        are published under another `Nats-Msg-Id`, PROTOCOL.md §9.4)."""
        if not event_ids:
            return {}
        marks = ",".join("?" * len(event_ids))  # a publish batch: Limits.batch_size ids
        rows = self._db.execute(
            f"SELECT event_id, seq FROM audit_reoffers WHERE event_id IN ({marks})",  # noqa: S608
            tuple(event_ids),
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def ledger_restores_applied(self) -> dict[int, int]:
        """seq -> time this agent accepted it, of every ledger restore it accepted."""
        rows = self._db.execute("SELECT seq, applied_at FROM ledger_restores")
        return {int(r[0]): int(r[1]) for r in rows}

    # --- restores and resend requests (agents/resend.py, PROTOCOL.md §6.3) ------------------

    def record_agent_restore(self) -> None:
        """Note, in a database just put back from a backup, that resend requests are due."""
        with self.transaction() as tx:
            tx.execute("INSERT INTO agent_restores (restored_at) VALUES (?)", (clock.now(),))

    @staticmethod
    def is_agent_database(path: Path) -> bool:
        """Whether `path` is a SQLite file holding an agent's tables (read only)."""
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error:
            return False
        try:
            names = {
                str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        except sqlite3.Error:  # not a database at all
            return False
        finally:
            db.close()
        return {"outbox", "deliveries", "inbox", "audit_outbox", "referrals"} <= names

    def last_audit_event(self) -> bytes | None:
        """The newest signed audit event (it names the agency the database belongs to)."""
        row = self._db.execute("SELECT event FROM audit_outbox ORDER BY seq DESC LIMIT 1")
        found = row.fetchone()
        return None if found is None else bytes(found[0])

    def checkpoint_wal(self) -> None:
        """Move every commit from the WAL into the database file (before it is copied)."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

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
            " AND o.kind != 'resend-request' ORDER BY o.created, d.rowid LIMIT ?",
            (recipient, since, limit),
        ).fetchall()
        return [ResendCandidate(r[0], r[1], r[2], int(r[3]), bytes(r[4])) for r in rows]

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

    # --- inbox ----------------------------------------------------------------------------

    def received_stream_seq(self, message_id: str) -> int | None:
        """The stream sequence a message id was first received at, if it was."""
        row = self._db.execute(
            "SELECT stream_seq FROM inbox WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def insert_received(self, db: sqlite3.Connection, r: Received, *, stream_seq: int) -> None:
        db.execute(
            "INSERT INTO inbox (message_id, kind, sender, envelope_hash, stream_seq, created,"
            " received_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.message_id,
                r.kind,
                r.sender,
                r.envelope_hash,
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

    def referrals_page(
        self, *, after: int, since: int, state: str | None, limit: int
    ) -> list[tuple[Any, ...]]:
        """Referral pairs changed at or after `since`, in a given state or any, by rowid."""
        columns = (
            "SELECT rowid, referral_id, counterpart, side, state, referral_type, urgency,"
            " created, updated FROM referrals WHERE rowid > ? AND updated >= ?"
        )
        if state is None:
            return self._db.execute(
                columns + " ORDER BY rowid LIMIT ?", (after, since, limit)
            ).fetchall()
        return self._db.execute(
            columns + " AND state = ? ORDER BY rowid LIMIT ?", (after, since, state, limit)
        ).fetchall()

    # --- signing key history and consents -----------------------------------------------------

    def remember_keys(self, directory: Directory, *, seen_at: int) -> int:
        """Fold an accepted directory into the signing key history; the windows changed."""
        with self.transaction() as tx:
            changed = merge(_key_windows(tx, None), directory, seen_at=seen_at)
            tx.executemany(
                "INSERT INTO signing_key_history (agency, kid, valid_from, public, valid_until,"
                " revoked_at, listed_version, delisted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (agency, kid, valid_from) DO UPDATE SET"
                " valid_until = excluded.valid_until, revoked_at = excluded.revoked_at,"
                " listed_version = excluded.listed_version, delisted_at = excluded.delisted_at",
                [
                    (
                        w.agency,
                        w.kid,
                        w.valid_from,
                        w.public,
                        w.valid_until,
                        w.revoked_at,
                        w.listed_version,
                        w.delisted_at,
                    )
                    for w in changed
                ],
            )
        return len(changed)

    def key_history(self, agency: str) -> list[KeyWindow]:
        """Every signing key window of `agency` the history holds."""
        return _key_windows(self._db, agency)

    @staticmethod
    def insert_consent(
        db: sqlite3.Connection, receipt_id: str, signed: bytes, recorded: int
    ) -> bool:
        """Store a signed receipt; False (nothing written) if the id is taken."""
        cursor = db.execute(
            "INSERT INTO consents (receipt_id, signed, recorded) VALUES (?, ?, ?)"
            " ON CONFLICT (receipt_id) DO NOTHING",
            (receipt_id, signed, recorded),
        )
        return cursor.rowcount == 1

    def consent(self, receipt_id: str) -> StoredConsent | None:
        return _consent(self._db, receipt_id)

    # --- deliveries that can never succeed (agents/standing.py) ---------------------------

    def _migrate_deliveries(self) -> None:
        """Databases made before copies could fail: rebuild `deliveries` with the `failed`
        state and the `failure` column (SQLite cannot alter a CHECK constraint)."""
        row = self._db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'"
        ).fetchone()
        if row is None or "'failed'" in row[0]:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("ALTER TABLE deliveries RENAME TO deliveries_old")
            self._db.execute("DROP INDEX IF EXISTS deliveries_queued")
            for statement in SCHEMA.split(";"):
                if "TABLE IF NOT EXISTS deliveries" in statement:
                    self._db.execute(statement)
            self._db.execute(
                "INSERT INTO deliveries (message_id, recipient, state, attempts, stream_seq,"
                " sent_at, delivered_at) SELECT message_id, recipient, state, attempts,"
                " stream_seq, sent_at, delivered_at FROM deliveries_old"
            )
            self._db.execute("DROP TABLE deliveries_old")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

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

    # --- ledger alerts (agents/ledger_check.py) -------------------------------------------

    def raise_alert(self, reason: str, event_id: str | None) -> bool:
        """Record an alert; an open one of the same reason (and event) counts one more
        occurrence instead. True if it is new."""
        now = clock.now()
        with self.transaction() as tx:
            updated = tx.execute(
                "UPDATE ledger_alerts SET occurrences = occurrences + 1, last_at = ?"
                " WHERE reason = ? AND coalesce(event_id, '') = coalesce(?, '')"
                " AND acknowledged_at IS NULL",
                (now, reason, event_id),
            ).rowcount
            if updated:
                return False
            tx.execute(
                "INSERT INTO ledger_alerts (reason, event_id, first_at, last_at)"
                " VALUES (?, ?, ?, ?)",
                (reason, event_id, now, now),
            )
        return True

    def alerted(self, event_id: str) -> bool:
        """Whether an alert about `event_id` was raised, open or acknowledged."""
        row = self._db.execute(
            "SELECT 1 FROM ledger_alerts WHERE event_id = ? LIMIT 1", (event_id,)
        ).fetchone()
        return row is not None

    def alerts(self, *, open_only: bool = False) -> list[tuple[Any, ...]]:
        """(seq, reason, event_id, first_at, last_at, occurrences, acknowledged_at) rows."""
        return self._db.execute(
            "SELECT seq, reason, event_id, first_at, last_at, occurrences, acknowledged_at"
            " FROM ledger_alerts WHERE acknowledged_at IS NULL OR NOT ? ORDER BY seq",
            (open_only,),
        ).fetchall()

    def open_alerts(self) -> tuple[int, str | None]:
        """How many alerts are not acknowledged, and the reason of the latest of them."""
        row = self._db.execute(
            "SELECT count(*), (SELECT reason FROM ledger_alerts WHERE acknowledged_at IS NULL"
            " ORDER BY last_at DESC, seq DESC LIMIT 1)"
            " FROM ledger_alerts WHERE acknowledged_at IS NULL"
        ).fetchone()
        return int(row[0]), row[1]

    @staticmethod
    def acknowledge_alerts(
        db: sqlite3.Connection, *, reason: str, event_ids: Sequence[str] = ()
    ) -> int:
        """Acknowledge the open alerts of `reason` (only those about `event_ids` if given),
        in the caller's transaction; how many."""
        now = clock.now()
        if not event_ids:
            return db.execute(
                "UPDATE ledger_alerts SET acknowledged_at = ?"
                " WHERE reason = ? AND acknowledged_at IS NULL",
                (now, reason),
            ).rowcount
        return sum(
            db.execute(
                "UPDATE ledger_alerts SET acknowledged_at = ?"
                " WHERE reason = ? AND event_id = ? AND acknowledged_at IS NULL",
                (now, reason, event_id),
            ).rowcount
            for event_id in event_ids
        )


@dataclass(frozen=True, slots=True)
class StoredConsent:
    """A consent row: the stored signed receipt (JSON), when it was signed, its withdrawal."""

    signed: bytes
    recorded: int
    withdrawn_at: int | None


def _consent(db: sqlite3.Connection, receipt_id: str) -> StoredConsent | None:
    row = db.execute(
        "SELECT signed, recorded, withdrawn_at FROM consents WHERE receipt_id = ?",
        (receipt_id,),
    ).fetchone()
    return None if row is None else StoredConsent(bytes(row[0]), int(row[1]), row[2])


def _key_windows(db: sqlite3.Connection, agency: str | None) -> list[KeyWindow]:
    columns = (
        "SELECT agency, kid, public, valid_from, valid_until, revoked_at, listed_version,"
        " delisted_at FROM signing_key_history"
    )
    rows = (
        db.execute(columns + " ORDER BY agency, kid, valid_from").fetchall()
        if agency is None
        else db.execute(
            columns + " WHERE agency = ? ORDER BY kid, valid_from", (agency,)
        ).fetchall()
    )
    return [
        KeyWindow(
            agency=r[0],
            kid=r[1],
            public=bytes(r[2]),
            valid_from=r[3],
            valid_until=r[4],
            revoked_at=r[5],
            listed_version=r[6],
            delisted_at=r[7],
        )
        for r in rows
    ]


def read_consent(
    path: Path, receipt_id: str, *, agency: str
) -> tuple[StoredConsent, list[KeyWindow]] | None:
    """For `nrm consent show`: the consent row and `agency`'s signing key history, read from
    the agent database at `path` opened read-only (the agent may be running)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        stored = _consent(db, receipt_id)
        if stored is None:
            return None
        has_history = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'signing_key_history'"
        ).fetchone()
        return stored, [] if has_history is None else _key_windows(db, agency)
    finally:
        db.close()
