"""The agent database's schema, its invariants and its migrations: the one place they live.

Every table of the agent is created here (agents/storage/ owns all its SQL, docs/DESIGN.md
"Storage"). `migrate` brings a database made by an earlier release up to date before the
schema is applied; PRAGMA user_version says which migrations a database has had.

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
- `attachments`, `attachment_uploads`, `received_attachments`: agents/attachments.py.
- `webhook_outbox`, `webhook_deliveries`: agents/webhooks.py.
"""

from __future__ import annotations

import sqlite3

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
-- Attachments (agents/attachments.py)
CREATE TABLE IF NOT EXISTS attachments (
    attachment_id TEXT PRIMARY KEY,
    sha256        TEXT NOT NULL,
    size          INTEGER NOT NULL,
    media_type    TEXT NOT NULL,
    sealed        BLOB NOT NULL,
    created       INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS attachment_uploads (
    object_name TEXT PRIMARY KEY,
    data        BLOB,
    state       TEXT NOT NULL CHECK (state IN ('queued', 'sent'))
) STRICT;
CREATE TABLE IF NOT EXISTS received_attachments (
    referral_id   TEXT NOT NULL,
    attachment_id TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    size          INTEGER NOT NULL,
    media_type    TEXT NOT NULL,
    sealed_key    BLOB,
    data          BLOB,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'ok', 'corrupted', 'erased')),
    PRIMARY KEY (referral_id, attachment_id)
) STRICT;
-- Webhooks (agents/webhooks.py)
CREATE TABLE IF NOT EXISTS webhook_outbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT NOT NULL UNIQUE,
    type          TEXT NOT NULL,
    created       INTEGER NOT NULL,
    body          BLOB NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'delivered')),
    delivered_at  INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS webhook_queued ON webhook_outbox(state)
    WHERE state = 'queued';
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    event_id      TEXT NOT NULL REFERENCES webhook_outbox(event_id),
    url           TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_status   INTEGER,
    delivered_at  INTEGER,
    PRIMARY KEY (event_id, url)
) STRICT;
"""


def migrate(db: sqlite3.Connection) -> None:
    """Bring a database made by an earlier release up to the schema (before SCHEMA runs)."""
    _migrate_deliveries(db)


def _statement(table: str) -> str:
    for statement in SCHEMA.split(";"):
        if f"TABLE IF NOT EXISTS {table} " in statement:
            return statement
    raise LookupError(table)


def _migrate_deliveries(db: sqlite3.Connection) -> None:
    """Databases made before copies could fail: rebuild `deliveries` with the `failed`
    state and the `failure` column (SQLite cannot alter a CHECK constraint)."""
    row = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'"
    ).fetchone()
    if row is None or "'failed'" in row[0]:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("ALTER TABLE deliveries RENAME TO deliveries_old")
        db.execute("DROP INDEX IF EXISTS deliveries_queued")
        db.execute(_statement("deliveries"))
        db.execute(
            "INSERT INTO deliveries (message_id, recipient, state, attempts, stream_seq,"
            " sent_at, delivered_at) SELECT message_id, recipient, state, attempts,"
            " stream_seq, sent_at, delivered_at FROM deliveries_old"
        )
        db.execute("DROP TABLE deliveries_old")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
