//! The audit log on MongoDB: one document per record with `_id` = `seq`, plus a unique
//! index on `id`. An append reads the head and inserts the next link; the unique `_id`
//! is what keeps the chain from forking when appenders in different processes race (the
//! loser's insert fails with a duplicate key and it retries on the new head, after a
//! jittered backoff, a bounded number of times). No multi-document transaction is needed,
//! so it runs on a standalone server or any wire-compatible one (SecantusDB in the tests).
//! Within one process a mutex queues appenders, so only other processes cause retries.

use std::time::Duration;

use async_trait::async_trait;
use ferrobank_application::{AuditLog, AuditPage, AuditQuery, StoreError};
use ferrobank_domain::audit::{AuditRecord, ChainHead, NewAuditEntry};
use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use tokio::sync::Mutex;

use super::{StoredRecord, page_limit};

/// MongoDB's duplicate key error code.
const DUPLICATE_KEY: i32 = 11_000;

/// Where and how the audit stream is kept in MongoDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoAuditOptions {
    /// Database name.
    pub database: String,
    /// Collection name.
    pub collection: String,
    /// Most insert attempts of one append racing other processes.
    pub max_append_attempts: u32,
    /// How long to look for a reachable server before an operation fails.
    pub server_selection_timeout_ms: u64,
}

impl Default for MongoAuditOptions {
    fn default() -> Self {
        Self {
            database: "ferrobank".into(),
            collection: "audit_records".into(),
            max_append_attempts: 200,
            server_selection_timeout_ms: 5_000,
        }
    }
}

/// The audit log in a MongoDB collection.
#[derive(Debug)]
pub struct MongoAuditLog {
    records: Collection<StoredRecord>,
    append_lock: Mutex<()>,
    max_append_attempts: u32,
}

fn unavailable(error: mongodb::error::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// A duplicate key error, alone or among the write errors of an `insert_many`.
pub(super) fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write)) => write.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(many) => {
            many.write_errors.iter().flatten().any(|write| write.code == DUPLICATE_KEY)
        }
        _ => false,
    }
}

fn seq_param(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit seq {seq} overflows")))
}

impl MongoAuditLog {
    /// Connects to `url` (`mongodb://...`) and creates the collection's indexes if missing.
    pub async fn connect(url: &str, options: MongoAuditOptions) -> Result<Self, StoreError> {
        let mut client_options = ClientOptions::parse(url).await.map_err(unavailable)?;
        client_options.server_selection_timeout =
            Some(Duration::from_millis(options.server_selection_timeout_ms));
        client_options.app_name.get_or_insert_with(|| "ferrobank".into());
        let client = Client::with_options(client_options).map_err(unavailable)?;
        let records =
            client.database(&options.database).collection::<StoredRecord>(&options.collection);
        let unique = IndexOptions::builder().unique(true).build();
        let indexes = [
            IndexModel::builder().keys(doc! { "id": 1 }).options(unique).build(),
            IndexModel::builder().keys(doc! { "actor_id": 1, "_id": 1 }).build(),
            IndexModel::builder().keys(doc! { "action": 1, "_id": 1 }).build(),
            IndexModel::builder().keys(doc! { "resource": 1, "_id": 1 }).build(),
            IndexModel::builder().keys(doc! { "at_ms": 1 }).build(),
        ];
        records.create_indexes(indexes).await.map_err(unavailable)?;
        Ok(Self {
            records,
            append_lock: Mutex::new(()),
            max_append_attempts: options.max_append_attempts.max(1),
        })
    }

    async fn find(&self, filter: Document, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let mut cursor = self
            .records
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(i64::from(limit))
            .await
            .map_err(unavailable)?;
        let mut records = Vec::new();
        while cursor.advance().await.map_err(unavailable)? {
            let stored = cursor
                .deserialize_current()
                .map_err(|e| StoreError::Corrupt(format!("audit document: {e}")))?;
            records.push(stored.into_record()?);
        }
        Ok(records)
    }
}

#[async_trait]
impl AuditLog for MongoAuditLog {
    async fn append_all(
        &self,
        entries: Vec<NewAuditEntry>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let _queued = self.append_lock.lock().await;
        let ids: Vec<String> = entries.iter().map(|e| e.id.to_string()).collect();
        let wanted = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        for attempt in 0..self.max_append_attempts {
            // A retried append (same ids) returns the records the first attempt wrote; so
            // does a retry after a race that inserted only the first links (ordered insert).
            let stored = self.find(doc! { "id": { "$in": &ids } }, wanted).await?;
            let last = self.records.find_one(doc! {}).sort(doc! { "_id": -1 }).await;
            let head = match last.map_err(unavailable)? {
                Some(stored) => ChainHead::of(&stored.into_record()?),
                None => ChainHead::GENESIS,
            };
            let (all, new) = head.link_all(entries.clone(), stored);
            if new.is_empty() {
                return Ok(all);
            }
            let documents =
                new.iter().map(StoredRecord::from_record).collect::<Result<Vec<_>, _>>()?;
            match self.records.insert_many(documents).await {
                Ok(_) => return Ok(all),
                Err(error) if is_duplicate_key(&error) => {
                    // Another process linked one of these seqs first: back off, then retry
                    // on the new head. Jitter keeps racing processes from colliding in step.
                    let ceiling_ms = 1_u64 << attempt.min(5);
                    let jitter_ms = rand::random::<u64>() % (ceiling_ms + 1);
                    tokio::time::sleep(Duration::from_millis(jitter_ms)).await;
                }
                Err(error) => return Err(unavailable(error)),
            }
        }
        Err(StoreError::Conflict(format!(
            "audit append lost {} races for the head",
            self.max_append_attempts
        )))
    }

    async fn read(&self, from_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.find(doc! { "_id": { "$gte": seq_param(from_seq)? } }, page_limit(limit)).await
    }

    async fn query(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let limit = page_limit(query.limit);
        let mut filter = doc! { "_id": { "$gt": seq_param(query.after_seq.unwrap_or(0))? } };
        if let Some(actor) = &query.actor {
            filter.insert("actor_kind", actor.kind());
            filter.insert("actor_id", actor.id());
        }
        if let Some(action) = &query.action {
            filter.insert("action", action.as_str());
        }
        if let Some(resource) = &query.resource {
            filter.insert("resource", resource.as_str());
        }
        let mut at = Document::new();
        if let Some(from_ms) = query.from_ms {
            at.insert("$gte", from_ms);
        }
        if let Some(until_ms) = query.until_ms {
            at.insert("$lt", until_ms);
        }
        if !at.is_empty() {
            filter.insert("at_ms", at);
        }
        // One more than asked tells whether another page follows.
        let mut records = self.find(filter, limit + 1).await?;
        let more = records.len() > limit as usize;
        records.truncate(limit as usize);
        let next_after = if more { records.last().map(|record| record.seq) } else { None };
        Ok(AuditPage { records, next_after })
    }
}
