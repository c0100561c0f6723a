-- The enriched activity log (application/src/activity.rs): one row per payment event,
-- written for humans by the audit consumer. `id` is the event id, so a redelivered event
-- is not stored twice. Not hash-chained: a read model; the audit trail is the evidence.
CREATE TABLE activity (
    id TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    action TEXT NOT NULL,
    summary TEXT NOT NULL,
    document TEXT NOT NULL
);

-- Pages walk (at_ms, id); per payment, or the whole stream.
CREATE INDEX activity_payment ON activity (payment_id, at_ms, id);
CREATE INDEX activity_at ON activity (at_ms, id);
