-- The audit trail: an append-only, hash-chained stream (domain/src/audit.rs). `seq` is
-- the primary key, so two appenders can never both write the same link; hashes are
-- lowercase hex and `details` canonical JSON, exactly what was hashed.
CREATE TABLE audit_records (
    seq BIGINT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    at_ms BIGINT NOT NULL,
    actor_kind TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    outcome TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

-- The filters of GET /api/audit, each walked in seq order for cursor pagination.
CREATE INDEX audit_records_actor ON audit_records (actor_id, seq);
CREATE INDEX audit_records_action ON audit_records (action, seq);
CREATE INDEX audit_records_resource ON audit_records (resource, seq);
CREATE INDEX audit_records_at ON audit_records (at_ms);
