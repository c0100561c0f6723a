-- Inbox rows are kept for the redelivery horizon only (the outbox's retention, 7 days) and
-- purged by age: this index is what keeps the periodic purge from scanning the table.
CREATE INDEX inbox_by_time ON inbox (processed_at_ms);
