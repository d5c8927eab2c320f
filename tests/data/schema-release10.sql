-- The referral tables as release 10 made them, keyed by referral id alone
-- (the starting point of tests/test_storage.py's migration tests).
CREATE TABLE inbox (
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
CREATE INDEX inbox_kind ON inbox(kind, seq);
CREATE INDEX inbox_referral ON inbox(referral_id);
CREATE TABLE referrals (
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
CREATE INDEX referrals_updated ON referrals(updated);
CREATE INDEX referrals_message ON referrals(message_id);
CREATE INDEX referrals_expiring ON referrals(expires) WHERE expires IS NOT NULL;
CREATE INDEX referrals_escalating ON referrals(created)
    WHERE side = 'sender' AND escalated_at IS NULL AND state IN ('submitted', 'delivered')
    AND urgency IN ('urgent', 'emergency');
CREATE TABLE history (
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
CREATE INDEX history_referral ON history(referral_id);
CREATE TABLE data_keys (
    referral_id TEXT PRIMARY KEY,
    sealed_key  BLOB
) STRICT;
CREATE TABLE received_attachments (
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
