-- Notifications of payment events (application/src/notifications.rs). Ids are UUID v7
-- text, so ordering by id is ordering by creation and the id is the listing cursor.

-- A customer's webhook endpoints; deleting one sets `disabled_at_ms` (the log stays).
CREATE TABLE webhook_endpoints (
    id             TEXT   PRIMARY KEY,
    owner          TEXT   NOT NULL,
    url            TEXT   NOT NULL,
    event_types    TEXT   NOT NULL, -- JSON array of event types
    description    TEXT,
    secret         TEXT   NOT NULL, -- whsec_...: needed to sign, so kept as is
    created_at_ms  INTEGER NOT NULL,
    disabled_at_ms INTEGER
);
CREATE INDEX webhook_endpoints_by_owner ON webhook_endpoints (owner, id);

-- One event to one endpoint. UNIQUE (endpoint_id, event_id) makes a redelivered event a
-- no-op; `claim` is the token of the deliverer holding it until `next_attempt_at_ms`.
CREATE TABLE webhook_deliveries (
    id                 TEXT   PRIMARY KEY,
    endpoint_id        TEXT   NOT NULL REFERENCES webhook_endpoints (id),
    owner              TEXT   NOT NULL,
    event_id           TEXT   NOT NULL,
    event_type         TEXT   NOT NULL,
    message_id         TEXT   NOT NULL,
    payload            TEXT   NOT NULL,
    status             TEXT   NOT NULL,
    series             INTEGER NOT NULL,
    attempts           INTEGER NOT NULL,
    next_attempt_at_ms INTEGER,
    claim              TEXT,
    created_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    last_status_code   INTEGER,
    last_error         TEXT,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at_ms)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id);

-- The delivery log: every attempt of every series.
CREATE TABLE webhook_attempts (
    delivery_id     TEXT   NOT NULL REFERENCES webhook_deliveries (id),
    series          INTEGER NOT NULL,
    attempt         INTEGER NOT NULL,
    at_ms           INTEGER NOT NULL,
    duration_ms     INTEGER NOT NULL,
    status_code     INTEGER,
    error           TEXT,
    response_prefix TEXT,
    PRIMARY KEY (delivery_id, series, attempt)
);

-- The in-app inbox: one notification per (owner, event).
CREATE TABLE notifications (
    id            TEXT   PRIMARY KEY,
    owner         TEXT   NOT NULL,
    event_id      TEXT   NOT NULL,
    event_type    TEXT   NOT NULL,
    payment_id    TEXT,
    title         TEXT   NOT NULL,
    data          TEXT   NOT NULL,
    created_at_ms INTEGER NOT NULL,
    read_at_ms    INTEGER,
    UNIQUE (owner, event_id)
);
CREATE INDEX notifications_by_owner ON notifications (owner, id);
CREATE INDEX notifications_unread_by_owner ON notifications (owner, id) WHERE read_at_ms IS NULL;
