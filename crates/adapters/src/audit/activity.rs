//! The enriched activity log on MongoDB: one document per payment event in the collection
//! `activity`, `_id` = the event id, so a redelivered event's insert fails with a duplicate
//! key and changes nothing. The enriched payment is stored as a native document, so it can
//! be queried and indexed in MongoDB like any other.

use std::time::Duration;

use async_trait::async_trait;
use ferrobank_application::activity::activity_page_limit;
use ferrobank_application::{
    ActivityCursor, ActivityEntry, ActivityLog, ActivityPage, ActivityQuery, StoreError,
};
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, IndexModel};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// MongoDB's duplicate key error code.
const DUPLICATE_KEY: i32 = 11_000;

/// Where the activity log is kept in MongoDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoActivityOptions {
    /// Database name.
    pub database: String,
    /// Collection name.
    pub collection: String,
    /// How long to look for a reachable server before an operation fails.
    pub server_selection_timeout_ms: u64,
}

impl Default for MongoActivityOptions {
    fn default() -> Self {
        Self {
            database: "ferrobank".into(),
            collection: "activity".into(),
            server_selection_timeout_ms: 5_000,
        }
    }
}

/// An entry as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredActivity {
    #[serde(rename = "_id")]
    id: String,
    payment_id: String,
    at_ms: i64,
    action: String,
    summary: String,
    document: Document,
}

/// The activity log in a MongoDB collection.
#[derive(Debug)]
pub struct MongoActivityLog {
    entries: Collection<StoredActivity>,
}

fn unavailable(error: mongodb::error::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl MongoActivityLog {
    /// Connects to `url` (`mongodb://...`) and creates the collection's indexes if missing.
    pub async fn connect(url: &str, options: MongoActivityOptions) -> Result<Self, StoreError> {
        let mut client_options = ClientOptions::parse(url).await.map_err(unavailable)?;
        client_options.server_selection_timeout =
            Some(Duration::from_millis(options.server_selection_timeout_ms));
        client_options.app_name.get_or_insert_with(|| "ferrobank".into());
        let client = Client::with_options(client_options).map_err(unavailable)?;
        let entries =
            client.database(&options.database).collection::<StoredActivity>(&options.collection);
        let indexes = [
            IndexModel::builder().keys(doc! { "payment_id": 1, "at_ms": 1, "_id": 1 }).build(),
            IndexModel::builder().keys(doc! { "at_ms": 1, "_id": 1 }).build(),
        ];
        entries.create_indexes(indexes).await.map_err(unavailable)?;
        Ok(Self { entries })
    }
}

fn stored(entry: &ActivityEntry) -> Result<StoredActivity, StoreError> {
    let document = match bson::to_bson(&entry.document) {
        Ok(Bson::Document(document)) => document,
        // A document that is not a JSON object is kept under `value`.
        Ok(other) => doc! { "value": other },
        Err(error) => return Err(StoreError::Corrupt(format!("activity document: {error}"))),
    };
    Ok(StoredActivity {
        id: entry.id.to_string(),
        payment_id: entry.payment_id.clone(),
        at_ms: entry.at_ms,
        action: entry.action.clone(),
        summary: entry.summary.clone(),
        document,
    })
}

fn entry(stored: StoredActivity) -> Result<ActivityEntry, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("activity {}: {what}", stored.id));
    let document = Bson::Document(stored.document.clone()).into_relaxed_extjson();
    Ok(ActivityEntry {
        id: Uuid::parse_str(&stored.id).map_err(|e| corrupt(e.to_string()))?,
        payment_id: stored.payment_id,
        at_ms: stored.at_ms,
        action: stored.action,
        summary: stored.summary,
        document,
    })
}

#[async_trait]
impl ActivityLog for MongoActivityLog {
    async fn append_all(&self, entries: &[ActivityEntry]) -> Result<u64, StoreError> {
        let mut documents = Vec::with_capacity(entries.len());
        for entry in entries {
            entry.validate()?;
            documents.push(stored(entry)?);
        }
        if documents.is_empty() {
            return Ok(0);
        }
        let total = documents.len() as u64;
        // Unordered: every entry not stored yet is inserted, whatever fails before it.
        match self.entries.insert_many(documents).ordered(false).await {
            Ok(_) => Ok(total),
            Err(error) => match error.kind.as_ref() {
                ErrorKind::InsertMany(many)
                    if many.write_concern_error.is_none()
                        && many.write_errors.iter().flatten().all(|w| w.code == DUPLICATE_KEY) =>
                {
                    let duplicates = many.write_errors.iter().flatten().count() as u64;
                    Ok(total.saturating_sub(duplicates))
                }
                ErrorKind::Write(WriteFailure::WriteError(write))
                    if write.code == DUPLICATE_KEY =>
                {
                    Ok(total - 1)
                }
                _ => Err(unavailable(error)),
            },
        }
    }

    async fn query(&self, query: &ActivityQuery) -> Result<ActivityPage, StoreError> {
        let limit = activity_page_limit(query.limit);
        let mut filter = Document::new();
        if let Some(payment_id) = &query.payment_id {
            filter.insert("payment_id", payment_id.as_str());
        }
        if let Some(after) = query.after {
            filter.insert(
                "$or",
                vec![
                    doc! { "at_ms": { "$gt": after.at_ms } },
                    doc! { "at_ms": after.at_ms, "_id": { "$gt": after.id.to_string() } },
                ],
            );
        }
        // One more than asked tells whether another page follows.
        let mut cursor = self
            .entries
            .find(filter)
            .sort(doc! { "at_ms": 1, "_id": 1 })
            .limit(i64::from(limit) + 1)
            .await
            .map_err(unavailable)?;
        let mut entries = Vec::new();
        while cursor.advance().await.map_err(unavailable)? {
            let stored = cursor
                .deserialize_current()
                .map_err(|e| StoreError::Corrupt(format!("activity document: {e}")))?;
            entries.push(entry(stored)?);
        }
        let more = entries.len() > limit as usize;
        entries.truncate(limit as usize);
        let next_after = if more { entries.last().map(ActivityCursor::after) } else { None };
        Ok(ActivityPage { entries, next_after })
    }
}
