//! The audit log on SQL: one table, `seq` as primary key. An append reads the head and
//! inserts the next link in one write transaction that holds the stream's lock (SQLite:
//! `BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped advisory lock), so concurrent
//! appenders, in this process or another, queue instead of forking the chain.

use async_trait::async_trait;
use ferrobank_application::{AuditLog, AuditPage, AuditQuery, StoreError};
use ferrobank_domain::audit::{AuditRecord, ChainHead, NewAuditEntry, parse_hash};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::ledger::in_lists;
use super::{Backend, SqlStore, map_err, placeholders};
use crate::audit::{StoredRecord, page_limit};

/// The advisory lock key of the audit stream on PostgreSQL.
const AUDIT_LOCK_KEY: i64 = 7_212_347;

const COLUMNS: &str = "seq, id, at_ms, actor_kind, actor_id, action, resource, outcome, \
                       details, prev_hash, hash";

fn stored(row: &AnyRow) -> Result<StoredRecord, StoreError> {
    Ok(StoredRecord {
        seq: row.try_get("seq").map_err(map_err)?,
        id: row.try_get("id").map_err(map_err)?,
        at_ms: row.try_get("at_ms").map_err(map_err)?,
        actor_kind: row.try_get("actor_kind").map_err(map_err)?,
        actor_id: row.try_get("actor_id").map_err(map_err)?,
        action: row.try_get("action").map_err(map_err)?,
        resource: row.try_get("resource").map_err(map_err)?,
        outcome: row.try_get("outcome").map_err(map_err)?,
        details: row.try_get("details").map_err(map_err)?,
        prev_hash: row.try_get("prev_hash").map_err(map_err)?,
        hash: row.try_get("hash").map_err(map_err)?,
    })
}

fn records(rows: &[AnyRow]) -> Result<Vec<AuditRecord>, StoreError> {
    rows.iter().map(|row| stored(row)?.into_record()).collect()
}

fn seq_param(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit seq {seq} overflows")))
}

/// Most attempts of one append when the database reports a conflict (SQLite busy past its
/// timeout under many writers). Each attempt is a whole transaction, rolled back on failure.
const MAX_APPEND_ATTEMPTS: u32 = 5;

/// Records per multi-row `INSERT` (11 parameters each).
const INSERT_CHUNK_ROWS: usize = 64;

impl SqlStore {
    /// One batch of appends in one write transaction holding the stream's lock.
    async fn append_all_once(
        &self,
        entries: Vec<NewAuditEntry>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(AUDIT_LOCK_KEY)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        // A retried append (same id) returns the record the first attempt wrote.
        let ids: Vec<String> = entries.iter().map(|e| e.id.to_string()).collect();
        let mut stored_records = Vec::new();
        for (list, values) in in_lists(&ids) {
            let sql = format!("SELECT {COLUMNS} FROM audit_records WHERE id IN ({list})");
            let mut query = sqlx::query(&sql);
            for value in values {
                query = query.bind(value);
            }
            stored_records.extend(records(&query.fetch_all(&mut *tx).await.map_err(map_err)?)?);
        }
        let head = sqlx::query("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let head = match head {
            None => ChainHead::GENESIS,
            Some(row) => {
                let seq: i64 = row.try_get("seq").map_err(map_err)?;
                let hash: String = row.try_get("hash").map_err(map_err)?;
                ChainHead {
                    seq: u64::try_from(seq)
                        .map_err(|_| StoreError::Corrupt(format!("audit seq {seq}")))?,
                    hash: parse_hash("hash", &hash)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                }
            }
        };
        let (all, new) = head.link_all(entries, stored_records);
        const WIDTH: usize = 11;
        for chunk in new.chunks(INSERT_CHUNK_ROWS) {
            let values: Vec<String> =
                (0..chunk.len()).map(|i| format!("({})", placeholders(i * WIDTH, WIDTH))).collect();
            let sql = format!("INSERT INTO audit_records ({COLUMNS}) VALUES {}", values.join(", "));
            let mut query = sqlx::query(&sql);
            for record in chunk {
                let row = StoredRecord::from_record(record)?;
                query = query
                    .bind(row.seq)
                    .bind(row.id)
                    .bind(row.at_ms)
                    .bind(row.actor_kind)
                    .bind(row.actor_id)
                    .bind(row.action)
                    .bind(row.resource)
                    .bind(row.outcome)
                    .bind(row.details)
                    .bind(row.prev_hash)
                    .bind(row.hash);
            }
            query.execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(all)
    }
}

#[async_trait]
impl AuditLog for SqlStore {
    async fn append_all(
        &self,
        entries: Vec<NewAuditEntry>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut attempt = 1;
        loop {
            match self.append_all_once(entries.clone()).await {
                Err(StoreError::Conflict(_)) if attempt < MAX_APPEND_ATTEMPTS => attempt += 1,
                done => return done,
            }
        }
    }

    async fn read(&self, from_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_records WHERE seq >= $1 ORDER BY seq LIMIT $2"
        ))
        .bind(seq_param(from_seq)?)
        .bind(i64::from(page_limit(limit)))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        records(&rows)
    }

    async fn query(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let limit = page_limit(query.limit);
        let mut conditions = vec!["seq > $1".to_owned()];
        let mut texts: Vec<String> = Vec::new();
        let mut numbers: Vec<i64> = Vec::new();
        // Text parameters first ($2..), then numbers, so each binds in placeholder order.
        if let Some(actor) = &query.actor {
            texts.push(actor.kind().to_owned());
            conditions.push(format!("actor_kind = ${}", texts.len() + 1));
            texts.push(actor.id().to_owned());
            conditions.push(format!("actor_id = ${}", texts.len() + 1));
        }
        if let Some(action) = &query.action {
            texts.push(action.as_str().to_owned());
            conditions.push(format!("action = ${}", texts.len() + 1));
        }
        if let Some(resource) = &query.resource {
            texts.push(resource.clone());
            conditions.push(format!("resource = ${}", texts.len() + 1));
        }
        let first_number = texts.len() + 2;
        if let Some(from_ms) = query.from_ms {
            conditions.push(format!("at_ms >= ${}", first_number + numbers.len()));
            numbers.push(from_ms);
        }
        if let Some(until_ms) = query.until_ms {
            conditions.push(format!("at_ms < ${}", first_number + numbers.len()));
            numbers.push(until_ms);
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_records WHERE {} ORDER BY seq LIMIT ${}",
            conditions.join(" AND "),
            first_number + numbers.len(),
        );
        let mut select = sqlx::query(&sql).bind(seq_param(query.after_seq.unwrap_or(0))?);
        for text in texts {
            select = select.bind(text);
        }
        for number in numbers {
            select = select.bind(number);
        }
        // One more than asked tells whether another page follows.
        let rows =
            select.bind(i64::from(limit) + 1).fetch_all(&self.pool).await.map_err(map_err)?;
        let mut records = records(&rows)?;
        let more = records.len() > limit as usize;
        records.truncate(limit as usize);
        let next_after = if more { records.last().map(|record| record.seq) } else { None };
        Ok(AuditPage { records, next_after })
    }
}
