-- Payments: one row per payment, its status moved only by the payment writer (in the same
-- transaction as the ledger hold and the outbox event). `seq` orders a list and is its
-- cursor; `beneficiary` is the JSON the customer gave (validated), `beneficiary_key` the
-- IBAN (electronic form) or internal account id the "new beneficiary" rule looks up.
CREATE TABLE payments (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    owner           TEXT    NOT NULL,
    debtor_account  TEXT    NOT NULL,
    beneficiary     TEXT    NOT NULL,
    beneficiary_key TEXT    NOT NULL,
    amount          BIGINT  NOT NULL,
    currency        TEXT    NOT NULL,
    reference       TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    risk            TEXT    NOT NULL,
    hold_id         TEXT,
    idempotency_key TEXT    NOT NULL,
    failure_code    TEXT,
    reviewer        TEXT,
    created_by      TEXT    NOT NULL,
    created_at_ms   BIGINT  NOT NULL,
    updated_at_ms   BIGINT  NOT NULL
);
CREATE INDEX payments_by_account ON payments (debtor_account, seq);
CREATE INDEX payments_by_status ON payments (status, updated_at_ms);
CREATE INDEX payments_by_beneficiary ON payments (owner, beneficiary_key, status);

-- Consumers' de-duplication: an event id is recorded in the same transaction as the
-- effect it caused, so a redelivered event finds it and does nothing.
CREATE TABLE inbox (
    consumer        TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    processed_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

-- The relay publishes each event keyed by its subject (the account whose order it keeps)
-- and with the W3C traceparent of the request that caused it.
ALTER TABLE outbox ADD COLUMN subject TEXT;
ALTER TABLE outbox ADD COLUMN traceparent TEXT;

-- Wakes the relay (LISTEN ferrobank_outbox) when a transaction that wrote the outbox
-- commits; NOTIFY is delivered at commit and folded per transaction.
CREATE FUNCTION ferrobank_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ferrobank_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION ferrobank_outbox_notify();
