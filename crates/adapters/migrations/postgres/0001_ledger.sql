-- ferrobank ledger schema, PostgreSQL. Amounts and balances are integer minor units.
CREATE TABLE accounts (
    id              TEXT    PRIMARY KEY,
    ledger          BIGINT NOT NULL,
    currency        TEXT    NOT NULL,
    code            BIGINT NOT NULL,
    owner           TEXT    NOT NULL,
    flags           BIGINT NOT NULL,
    debits_pending  BIGINT NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    debits_posted   BIGINT NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_pending BIGINT NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    credits_posted  BIGINT NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    created_at_ms   BIGINT NOT NULL
);
CREATE INDEX accounts_by_owner ON accounts (owner);

CREATE TABLE transfers (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                TEXT    NOT NULL UNIQUE,
    debit_account_id  TEXT    NOT NULL REFERENCES accounts (id),
    credit_account_id TEXT    NOT NULL REFERENCES accounts (id),
    amount            BIGINT NOT NULL CHECK (amount > 0),
    ledger            BIGINT NOT NULL,
    currency          TEXT    NOT NULL,
    code              BIGINT NOT NULL,
    kind              TEXT    NOT NULL CHECK (kind IN ('posted', 'pending', 'post_pending', 'void_pending')),
    pending_id        TEXT    REFERENCES transfers (id),
    timeout_s         BIGINT NOT NULL DEFAULT 0,
    linked            BIGINT NOT NULL DEFAULT 0,
    requested_amount  BIGINT,
    created_at_ms     BIGINT NOT NULL,
    expires_at_ms     BIGINT,
    pending_status    TEXT CHECK (pending_status IN ('pending', 'posted', 'voided', 'expired')),
    dr_debits_pending  BIGINT NOT NULL,
    dr_debits_posted   BIGINT NOT NULL,
    dr_credits_pending BIGINT NOT NULL,
    dr_credits_posted  BIGINT NOT NULL,
    cr_debits_pending  BIGINT NOT NULL,
    cr_debits_posted   BIGINT NOT NULL,
    cr_credits_pending BIGINT NOT NULL,
    cr_credits_posted  BIGINT NOT NULL
);
CREATE INDEX transfers_by_debit ON transfers (debit_account_id, seq);
CREATE INDEX transfers_by_credit ON transfers (credit_account_id, seq);
CREATE INDEX transfers_due ON transfers (expires_at_ms) WHERE pending_status = 'pending';

CREATE TABLE outbox (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        TEXT    NOT NULL UNIQUE,
    kind            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    published_at_ms BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at_ms IS NULL;

CREATE TABLE idempotency_keys (
    scope           TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    request_hash    TEXT    NOT NULL,
    status          BIGINT,
    response_body   TEXT,
    locked_until_ms BIGINT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at_ms);
