-- ferrobank ledger schema, SQLite. Amounts and balances are integer minor units.
CREATE TABLE accounts (
    id              TEXT    PRIMARY KEY,
    ledger          INTEGER NOT NULL,
    currency        TEXT    NOT NULL,
    code            INTEGER NOT NULL,
    owner           TEXT    NOT NULL,
    flags           INTEGER NOT NULL,
    debits_pending  INTEGER NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    debits_posted   INTEGER NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_pending INTEGER NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    credits_posted  INTEGER NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    created_at_ms   INTEGER NOT NULL
);
CREATE INDEX accounts_by_owner ON accounts (owner);

CREATE TABLE transfers (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT    NOT NULL UNIQUE,
    debit_account_id  TEXT    NOT NULL REFERENCES accounts (id),
    credit_account_id TEXT    NOT NULL REFERENCES accounts (id),
    amount            INTEGER NOT NULL CHECK (amount > 0),
    ledger            INTEGER NOT NULL,
    currency          TEXT    NOT NULL,
    code              INTEGER NOT NULL,
    kind              TEXT    NOT NULL CHECK (kind IN ('posted', 'pending', 'post_pending', 'void_pending')),
    pending_id        TEXT    REFERENCES transfers (id),
    timeout_s         INTEGER NOT NULL DEFAULT 0,
    linked            INTEGER NOT NULL DEFAULT 0,
    requested_amount  INTEGER,
    created_at_ms     INTEGER NOT NULL,
    expires_at_ms     INTEGER,
    pending_status    TEXT CHECK (pending_status IN ('pending', 'posted', 'voided', 'expired')),
    dr_debits_pending  INTEGER NOT NULL,
    dr_debits_posted   INTEGER NOT NULL,
    dr_credits_pending INTEGER NOT NULL,
    dr_credits_posted  INTEGER NOT NULL,
    cr_debits_pending  INTEGER NOT NULL,
    cr_debits_posted   INTEGER NOT NULL,
    cr_credits_pending INTEGER NOT NULL,
    cr_credits_posted  INTEGER NOT NULL
);
CREATE INDEX transfers_by_debit ON transfers (debit_account_id, seq);
CREATE INDEX transfers_by_credit ON transfers (credit_account_id, seq);
CREATE INDEX transfers_due ON transfers (expires_at_ms) WHERE pending_status = 'pending';

CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE,
    kind            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    published_at_ms INTEGER
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at_ms IS NULL;

CREATE TABLE idempotency_keys (
    scope           TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    request_hash    TEXT    NOT NULL,
    status          INTEGER,
    response_body   TEXT,
    locked_until_ms INTEGER NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at_ms);
