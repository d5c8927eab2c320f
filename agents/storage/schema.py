"""The agent database's schema, its invariants and its migrations: the one place they live.

Every table of the agent is created here (agents/storage/ owns all its SQL, docs/DESIGN.md
"Storage"). `migrate` brings a database made by an earlier release up to date before the
schema is applied, each migration in its own transaction (runtime.migrate); PRAGMA
user_version says which migrations a database has had, and one of a newer release is refused.

- `outbox`: every envelope this agency sealed (referrals and receipts), committed before the
  API answers; `deliveries` tracks each copy per recipient until the bus acknowledges it and
  until the recipient's delivery receipt comes back.
- `inbox`: every envelope received, keyed by message id, committed before the JetStream ack;
  the unique key is what makes the agent store a message at most once. `stream` and
  `stream_seq` say where on the bus it was consumed (sequences are per stream): a row from
  before per-agency inbox streams (user_version 2) has the shared stream's name, `NRM_MSG`.
- `signing_key_history`: every signing key window any accepted directory listed
  (keys.key_history), so what an agency signed stays verifiable after its keys rotate, are
  pruned from the directory, or the agency is removed and re-admitted. Added by issue 10;
  `CREATE TABLE IF NOT EXISTS` adds it to databases made before, and consents stored before
  it hold no key id (consent.verify_stored_receipt finds theirs).
- `attachments`, `attachment_uploads`, `received_attachments`: agents/attachments.py.

Owner keys (issue 11): every aggregate about a referral is keyed by `(owner, referral_id)`,
`owner` being the agency that created and sent the referral: this agency for the referrals it
sent, the envelope's sender for those it received. Referral ids are chosen by their owner, so
only the pair names a referral; nothing another agency sends can reach a row of a referral it
does not own. `referrals`, `history`, `data_keys` and `received_attachments` carry the
column; in `inbox` the `sender` column is the owner of the referral a row carries;
`outbox`, `deliveries` and `consent_uses` only ever hold this agency's own referrals.
- `webhook_outbox`, `webhook_deliveries`: agents/webhooks.py.
- `protection_notices`: agents/storage/protections.py (PROTOCOL §8.9), a new table too.
- `reconsideration_requests`: agents/storage/reconsiderations.py (PROTOCOL §8.7
  "Reconsideration requests"), a new table too.
- `transfer_requests`, `case_transfers`, `case_owners`: agents/storage/transfers.py
  (PROTOCOL §8.10 "`transfer-request`", "`case-transfer`", "`case-owner-changed`"), new
  tables too.
- `cases`, `case_referrals`, `decisions`: agents/storage/cases.py (identification
  decisions, PROTOCOL §8.7); new tables, so `CREATE TABLE IF NOT EXISTS` adds them to
  older databases (no release had them: `case_referrals`' UNIQUE referral_id was added to
  the CREATE itself, before any release, so needs no migration).
- `contributions_sent`, `contributions`: agents/storage/contributions.py (statistics
  contributions, PROTOCOL §8.11); new tables too.
- `break_glass`: agents/storage/break_glass.py (referrals held for a second client's
  confirmation, PROTOCOL §8.2 step 2; only this agency's own, so keyed by referral id
  alone); a new table, added to older databases as above.
- `own_services`: agents/storage/own_services.py (the service ids this agency's own
  catalogues listed, and when each was left out: PROTOCOL §8.2 step 5); a new table too.
- `erasure_confirmations`, `attachment_deletions`: agents/erasure.py; `legal_holds`:
  agents/retention.py (both keyed as above).
"""

from __future__ import annotations

import sqlite3

from keys.subjects import SHARED_INBOX_STREAM  # where inbox rows before user_version 2 came from
from runtime.migrate import Migration, MigrationError
from runtime.migrate import migrate as run_migrations

__all__ = ["SCHEMA", "VERSION", "MigrationError", "migrate", "migrations"]

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
    body          BLOB,
    stream        TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS inbox_kind ON inbox(kind, seq);
CREATE INDEX IF NOT EXISTS inbox_owned_referral ON inbox(sender, referral_id);
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
    owner              TEXT NOT NULL,
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
    overdue_at         INTEGER,
    expires            INTEGER,
    client_reference   TEXT,
    -- what this agency sent the counterpart: the data categories of its minimised body,
    -- sorted and comma-joined (NULL: received, or sent before user_version 3)
    categories         TEXT,
    PRIMARY KEY (owner, referral_id, counterpart),
    -- a received referral is owned by the agency that sent it, one this agency sent by itself
    CHECK ((side = 'recipient') = (owner = counterpart)),
    CHECK (client_reference IS NULL OR side = 'sender'),
    CHECK (categories IS NULL OR side = 'sender')
) STRICT;
CREATE INDEX IF NOT EXISTS referrals_by_id ON referrals(referral_id);
CREATE INDEX IF NOT EXISTS referrals_updated ON referrals(updated);
CREATE INDEX IF NOT EXISTS referrals_message ON referrals(message_id);
CREATE INDEX IF NOT EXISTS referrals_expiring ON referrals(expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS referrals_escalating ON referrals(created)
    WHERE side = 'sender' AND escalated_at IS NULL AND state IN ('submitted', 'delivered')
    AND urgency IN ('urgent', 'emergency');
CREATE INDEX IF NOT EXISTS referrals_overdue ON referrals(urgency)
    WHERE side = 'sender' AND overdue_at IS NULL
    AND state IN ('submitted', 'delivered', 'acknowledged', 'more_info_requested');
CREATE UNIQUE INDEX IF NOT EXISTS referrals_client_reference
    ON referrals(client_reference, counterpart) WHERE client_reference IS NOT NULL;
CREATE TABLE IF NOT EXISTS history (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    owner        TEXT NOT NULL,
    referral_id  TEXT NOT NULL,
    counterpart  TEXT NOT NULL,
    from_state   TEXT,
    to_state     TEXT NOT NULL,
    party        TEXT NOT NULL,
    reason       TEXT,
    outcome      TEXT,
    at           INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS history_owned_referral ON history(owner, referral_id);
CREATE TABLE IF NOT EXISTS data_keys (
    owner       TEXT NOT NULL,
    referral_id TEXT NOT NULL,
    sealed_key  BLOB,
    PRIMARY KEY (owner, referral_id)
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
    owner         TEXT NOT NULL,
    referral_id   TEXT NOT NULL,
    attachment_id TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    size          INTEGER NOT NULL,
    media_type    TEXT NOT NULL,
    sealed_key    BLOB,
    data          BLOB,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'ok', 'corrupted', 'erased')),
    PRIMARY KEY (owner, referral_id, attachment_id)
) STRICT;
-- Erasure (agents/storage/erasure.py, docs/DESIGN.md "Erasure")
CREATE TABLE IF NOT EXISTS erasure_confirmations (
    receipt_id   TEXT NOT NULL,
    sender       TEXT NOT NULL,
    referral_ids TEXT NOT NULL,
    erased_at    INTEGER NOT NULL,
    PRIMARY KEY (receipt_id, sender)
) STRICT;
CREATE TABLE IF NOT EXISTS attachment_deletions (
    object_name TEXT PRIMARY KEY,
    queued_at   INTEGER NOT NULL
) STRICT;
-- Retention (agents/storage/retention.py, docs/DESIGN.md "Retention")
CREATE TABLE IF NOT EXISTS legal_holds (
    owner       TEXT NOT NULL,
    referral_id TEXT NOT NULL,
    placed_at   INTEGER NOT NULL,
    placed_by   TEXT NOT NULL,
    PRIMARY KEY (owner, referral_id)
) STRICT;
-- Access records (agents/access.py, PROTOCOL.md §9.0 `record.accessed`): the reads of one
-- received record by one API client inside a window not yet closed and signed
CREATE TABLE IF NOT EXISTS access_windows (
    client      TEXT NOT NULL,
    owner       TEXT NOT NULL,
    referral_id TEXT NOT NULL,
    record      TEXT NOT NULL CHECK (record IN ('body', 'attachment')),
    categories  TEXT NOT NULL,
    opened_at   INTEGER NOT NULL,
    reads       INTEGER NOT NULL CHECK (reads > 0),
    PRIMARY KEY (client, owner, referral_id, record)
) STRICT;
CREATE INDEX IF NOT EXISTS access_windows_opened ON access_windows(opened_at);
-- Webhooks (agents/webhooks.py)
CREATE TABLE IF NOT EXISTS cases (
    case_id     TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    referral_id TEXT NOT NULL,
    state       TEXT NOT NULL,
    age_route   TEXT NOT NULL CHECK (age_route IN ('adult', 'child')),
    opened_at   INTEGER NOT NULL,
    updated     INTEGER NOT NULL,
    left_reason TEXT,  -- why the person left: set with the state left_process only
    UNIQUE (owner, referral_id)
) STRICT;
CREATE TABLE IF NOT EXISTS case_referrals (
    case_id     TEXT NOT NULL REFERENCES cases(case_id),
    referral_id TEXT NOT NULL UNIQUE,  -- one case per referral
    PRIMARY KEY (case_id, referral_id)
) STRICT;
CREATE TABLE IF NOT EXISTS decisions (
    authority   TEXT NOT NULL,
    decision_id TEXT NOT NULL,
    case_id     TEXT NOT NULL,
    stage       TEXT NOT NULL CHECK (stage IN ('first', 'second')),
    outcome     TEXT NOT NULL CHECK (outcome IN ('positive', 'negative')),
    owner       TEXT NOT NULL,
    referral_id TEXT NOT NULL,
    signed      BLOB NOT NULL,
    reason      TEXT,
    salt        BLOB,
    stored_at   INTEGER NOT NULL,
    PRIMARY KEY (authority, decision_id),
    CHECK ((reason IS NULL) = (salt IS NULL))
) STRICT;
CREATE INDEX IF NOT EXISTS decisions_by_pair ON decisions(owner, referral_id);
CREATE INDEX IF NOT EXISTS decisions_by_case ON decisions(authority, case_id);
-- Break-glass referrals held for a second client's confirmation (agents/break_glass.py)
CREATE TABLE IF NOT EXISTS break_glass (
    referral_id      TEXT PRIMARY KEY,
    state            TEXT NOT NULL
        CHECK (state IN ('awaiting_confirmation', 'submitted', 'refused', 'lapsed')),
    reason           TEXT NOT NULL,
    requested_by     TEXT NOT NULL,
    requested_at     INTEGER NOT NULL,
    confirm_by       INTEGER NOT NULL,
    decided_by       TEXT,
    decided_at       INTEGER,
    refusal          TEXT,
    recipients       TEXT NOT NULL,
    client_reference TEXT,
    -- the submitted document under its own data key, the key under the storage key: both
    -- only while it waits (a decided hold keeps no personal data)
    sealed_key       BLOB,
    document         BLOB,
    CHECK ((state = 'awaiting_confirmation') = (document IS NOT NULL)),
    CHECK ((sealed_key IS NULL) = (document IS NULL)),
    CHECK ((state = 'awaiting_confirmation') = (decided_at IS NULL))
) STRICT;
CREATE INDEX IF NOT EXISTS break_glass_waiting ON break_glass(confirm_by)
    WHERE state = 'awaiting_confirmation';
-- The service ids this agency's own catalogues listed (agents/storage/own_services.py)
CREATE TABLE IF NOT EXISTS own_services (
    service_id  TEXT PRIMARY KEY,
    delisted_at INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS protection_notices (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    authority   TEXT NOT NULL,
    notice_id   TEXT NOT NULL,
    case_id     TEXT NOT NULL,
    protection  TEXT NOT NULL CHECK (protection IN ('no-removal', 'reflection')),
    event       TEXT NOT NULL,
    owner       TEXT NOT NULL,
    referral_id TEXT NOT NULL,
    signed      BLOB NOT NULL,
    stored_at   INTEGER NOT NULL,
    UNIQUE (authority, notice_id)
) STRICT;
CREATE INDEX IF NOT EXISTS protection_notices_by_pair ON protection_notices(owner, referral_id);
CREATE INDEX IF NOT EXISTS protection_notices_by_case
    ON protection_notices(authority, case_id, protection);
CREATE TABLE IF NOT EXISTS reconsideration_requests (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    requester    TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    case_id      TEXT NOT NULL,
    decision_id  TEXT NOT NULL,
    stage        TEXT NOT NULL CHECK (stage IN ('first', 'second')),
    ground       TEXT NOT NULL,
    owner        TEXT NOT NULL,
    referral_id  TEXT NOT NULL,
    at           INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    answered_by  TEXT,
    ended_by     TEXT,  -- the case step that ended it unanswered (left_process), else NULL
    UNIQUE (requester, request_id)
) STRICT;
CREATE INDEX IF NOT EXISTS reconsideration_requests_by_case
    ON reconsideration_requests(case_id);
CREATE TABLE IF NOT EXISTS transfer_requests (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    requester    TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    owner        TEXT NOT NULL,
    referral_id  TEXT NOT NULL,
    case_id      TEXT,
    reason       TEXT NOT NULL,
    at           INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('requested', 'delivered', 'granted', 'refused',
                                                'revoked', 'fulfilled', 'lapsed')),
    step_reason  TEXT,
    message_id   TEXT NOT NULL,
    created      INTEGER NOT NULL,
    updated      INTEGER NOT NULL,
    UNIQUE (requester, request_id)
) STRICT;
CREATE INDEX IF NOT EXISTS transfer_requests_by_message ON transfer_requests(message_id);
CREATE TABLE IF NOT EXISTS contributions_sent (
    period       TEXT NOT NULL,
    rapporteur   TEXT NOT NULL,
    message_id   TEXT NOT NULL,  -- the last copy's: deliveries(message_id, rapporteur)
    sent_at      INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    PRIMARY KEY (period, rapporteur)
) STRICT;
CREATE TABLE IF NOT EXISTS contributions (
    authority     TEXT NOT NULL,
    period        TEXT NOT NULL,
    body          BLOB NOT NULL,  -- sealed under the storage key, as a received referral's
    envelope_hash TEXT NOT NULL,
    received_at   INTEGER NOT NULL,
    envelope      BLOB NOT NULL,  -- as received, sealed to this agency: what the hash is over
    PRIMARY KEY (authority, period)
) STRICT;
CREATE TABLE IF NOT EXISTS case_transfers (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    owner        TEXT NOT NULL,
    transfer_id  TEXT NOT NULL,
    transferee   TEXT NOT NULL,
    referral_id  TEXT NOT NULL,
    case_id      TEXT,
    authority    TEXT,  -- at the owner: the competent authority of case_id, else NULL
    reason       TEXT NOT NULL,
    request_id   TEXT,
    urgency      TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('proposed', 'delivered', 'accepted', 'rejected',
                                                'revoked', 'expired', 'completed')),
    step_reason  TEXT,
    message_id   TEXT NOT NULL,
    sent_at      INTEGER NOT NULL,  -- the case-transfer envelope's `created`: expiry runs from it
    told         TEXT,  -- at the owner: the case-owner-changed envelope's message id, once sent
    told_failure TEXT,  -- at the owner: why that envelope could not be sealed (no usable key)
    body         BLOB,  -- at the transferee: R sealed under its data key (data_keys), else NULL
    -- at the owner, for subject access: what R carried (§8.1 categories, comma-joined) and
    -- under which basis; NULL at the transferee
    categories   TEXT,
    referral_type TEXT,
    legal_basis  TEXT,
    consent_receipt_id TEXT,
    created      INTEGER NOT NULL,
    updated      INTEGER NOT NULL,
    UNIQUE (owner, transfer_id)
) STRICT;
CREATE INDEX IF NOT EXISTS case_transfers_by_message ON case_transfers(message_id);
CREATE INDEX IF NOT EXISTS case_transfers_by_state ON case_transfers(state);
CREATE TABLE IF NOT EXISTS case_owners (
    case_id      TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    transfer_id  TEXT NOT NULL,
    changed_by   TEXT NOT NULL,
    at           INTEGER NOT NULL,
    received_at  INTEGER NOT NULL
) STRICT;
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


def _migrate_to_owner_keys(db: sqlite3.Connection, agency: str | None) -> None:
    """Version 1 (as release 0.1.0 left it): also what changed before user_version was
    kept, copies that can fail."""
    _migrate_deliveries(db)
    _migrate_owners(db, agency)


def _columns(db: sqlite3.Connection, table: str) -> set[str] | None:
    rows = db.execute(f"PRAGMA table_info({table})").fetchall()
    return {str(r[1]) for r in rows} if rows else None


#: Tables rebuilt by `_migrate_owners`, and the old indexes that go with them.
_OWNED = ("referrals", "history", "data_keys", "received_attachments")
_OLD_INDEXES = (
    "referrals_updated",
    "referrals_message",
    "referrals_expiring",
    "referrals_escalating",
    "history_referral",
    "inbox_referral",
)


def _migrate_owners(db: sqlite3.Connection, agency: str | None) -> None:
    """Databases made before owner keys: rebuild the referral tables keyed by (owner,
    referral id). A received referral's owner is its counterpart (the sender); one this
    agency sent is owned by `agency`. A data key or received attachment is given to the
    sender of the newest received referral with its id (before owner keys there could only
    be one live copy); one that matches none is dropped, as it could open nothing."""
    old = {t: _columns(db, t) for t in _OWNED}
    if old["referrals"] is None or "owner" in old["referrals"]:
        return  # a new database, or one already migrated
    (sent,) = db.execute("SELECT count(*) FROM referrals WHERE side = 'sender'").fetchone()
    if sent and not agency:
        raise MigrationError("migrating this database needs the agency it belongs to")
    for index in _OLD_INDEXES:
        db.execute(f"DROP INDEX IF EXISTS {index}")
    for table in _OWNED:
        if old[table] is not None:
            db.execute(f"ALTER TABLE {table} RENAME TO {table}_v0")
        db.execute(_statement(table))
    db.execute(
        "INSERT INTO referrals (owner, referral_id, counterpart, side, state, referral_type,"
        " urgency, legal_basis, consent_receipt_id, message_id, created, updated,"
        " escalated_at, expires) SELECT"
        " CASE r.side WHEN 'recipient' THEN r.counterpart ELSE :agency END,"
        " r.referral_id, r.counterpart, r.side, r.state, r.referral_type, r.urgency,"
        " r.legal_basis, r.consent_receipt_id, r.message_id, r.created, r.updated,"
        " r.escalated_at, r.expires FROM referrals_v0 r",
        {"agency": agency},
    )
    db.execute(
        "INSERT INTO history (seq, owner, referral_id, counterpart, from_state, to_state,"
        " party, reason, outcome, at) SELECT h.seq,"
        " CASE r.side WHEN 'recipient' THEN r.counterpart ELSE :agency END,"
        " h.referral_id, h.counterpart, h.from_state, h.to_state, h.party, h.reason,"
        " h.outcome, h.at FROM history_v0 h JOIN referrals_v0 r"
        " ON r.referral_id = h.referral_id AND r.counterpart = h.counterpart ORDER BY h.seq",
        {"agency": agency},
    )
    db.execute(
        "INSERT INTO data_keys (owner, referral_id, sealed_key)"
        " SELECT o.owner, x.referral_id, x.sealed_key FROM data_keys_v0 x"
        " JOIN (SELECT referral_id, counterpart AS owner, max(updated) FROM referrals_v0"
        " WHERE side = 'recipient' GROUP BY referral_id) o USING (referral_id)"
    )
    if old["received_attachments"] is not None:
        db.execute(
            "INSERT INTO received_attachments (owner, referral_id, attachment_id, sha256,"
            " size, media_type, sealed_key, data, state) SELECT o.owner, x.referral_id,"
            " x.attachment_id, x.sha256, x.size, x.media_type, x.sealed_key, x.data,"
            " x.state FROM received_attachments_v0 x"
            " JOIN (SELECT referral_id, counterpart AS owner, max(updated) FROM referrals_v0"
            " WHERE side = 'recipient' GROUP BY referral_id) o USING (referral_id)"
        )
    for table in _OWNED:
        if old[table] is not None:
            db.execute(f"DROP TABLE {table}_v0")


def _migrate_inbox_stream(db: sqlite3.Connection) -> None:
    """Databases made before per-agency inbox streams: each inbox row gets the stream it was
    consumed from, the shared `NRM_MSG` (its `stream_seq` is a sequence of that stream)."""
    columns = _columns(db, "inbox")
    if columns is None or "stream" in columns:
        return
    db.execute(f"ALTER TABLE inbox ADD COLUMN stream TEXT NOT NULL DEFAULT '{SHARED_INBOX_STREAM}'")


def _migrate_sent_categories(db: sqlite3.Connection) -> None:
    """Databases made before subject access reports: `referrals` gets the `categories`
    column (NULL for the referrals sent before: what they held was not kept). SQLite cannot
    add the fresh schema's CHECK (categories only on sent pairs) to an existing table; the
    storage layer is the one writer, and it sets categories on sent pairs only."""
    columns = _columns(db, "referrals")
    if columns is None or "categories" in columns:
        return
    db.execute("ALTER TABLE referrals ADD COLUMN categories TEXT")


def _migrate_overdue_at(db: sqlite3.Connection) -> None:
    """Databases made before the `respond` clock (agents/clocks.py): each referral pair gets
    `overdue_at`, when its overdue notice was sent (none yet)."""
    columns = _columns(db, "referrals")
    if columns is None or "overdue_at" in columns:
        return
    db.execute("ALTER TABLE referrals ADD COLUMN overdue_at INTEGER")


def _migrate_case_ends(db: sqlite3.Connection) -> None:
    """Databases made before a case's end was kept: `cases` gets `left_reason` and
    `reconsideration_requests` `ended_by` (NULL for every row before: no case that left
    kept its reason, no request was ended unanswered). A table not there yet is made whole
    by the schema."""
    for table, column in (("cases", "left_reason"), ("reconsideration_requests", "ended_by")):
        columns = _columns(db, table)
        if columns is not None and column not in columns:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")


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
    db.execute("ALTER TABLE deliveries RENAME TO deliveries_old")
    db.execute("DROP INDEX IF EXISTS deliveries_queued")
    db.execute(_statement("deliveries"))
    db.execute(
        "INSERT INTO deliveries (message_id, recipient, state, attempts, stream_seq,"
        " sent_at, delivered_at) SELECT message_id, recipient, state, attempts,"
        " stream_seq, sent_at, delivered_at FROM deliveries_old"
    )
    db.execute("DROP TABLE deliveries_old")


def migrations(agency: str | None) -> tuple[Migration, ...]:
    """The agent database's migrations, in order (runtime.migrate). `agency` is this
    agency's id: the owner of the referrals it sent."""
    return (
        Migration(
            1,
            "delivery copies can fail; every referral aggregate keyed by (owner, referral id)",
            lambda db: _migrate_to_owner_keys(db, agency),
        ),
        Migration(2, "inbox rows name the stream they were consumed from", _migrate_inbox_stream),
        Migration(
            3, "sent referral pairs keep the categories they carried", _migrate_sent_categories
        ),
        Migration(
            4, "referral pairs record when their respond clock went overdue", _migrate_overdue_at
        ),
        Migration(
            5,
            "cases keep why the person left; reconsideration requests what ended them unanswered",
            _migrate_case_ends,
        ),
    )


#: PRAGMA user_version of a database with every migration below.
VERSION = len(migrations(None))


def migrate(db: sqlite3.Connection, *, agency: str | None, what: str = "the agent database") -> int:
    """Bring a database made by an earlier release up to the schema (before SCHEMA runs),
    each migration in its own transaction; a database of a newer release is refused
    (runtime.migrate.DatabaseTooNewError). Returns the version the database had."""
    return run_migrations(db, migrations(agency), what=what)
