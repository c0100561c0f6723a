-- Emails of payment events (application/src/notifications.rs), when an SMTP server is
-- configured. UNIQUE (owner, event_id) makes a redelivered event a no-op, whatever the
-- owner's address is by then; `claim` is the token of the deliverer holding it until
-- `next_attempt_at_ms`. `skipped` rows (no verified address) say why in `last_error`.
CREATE TABLE email_deliveries (
    id                 TEXT COLLATE "C" PRIMARY KEY,
    owner              TEXT   NOT NULL,
    event_id           TEXT   NOT NULL,
    event_type         TEXT   NOT NULL,
    recipient          TEXT,
    subject            TEXT   NOT NULL,
    body               TEXT   NOT NULL,
    status             TEXT   NOT NULL,
    attempts           BIGINT NOT NULL,
    next_attempt_at_ms BIGINT,
    claim              TEXT,
    created_at_ms      BIGINT NOT NULL,
    updated_at_ms      BIGINT NOT NULL,
    last_error         TEXT,
    UNIQUE (owner, event_id)
);
CREATE INDEX email_deliveries_due ON email_deliveries (next_attempt_at_ms)
    WHERE status = 'pending';
