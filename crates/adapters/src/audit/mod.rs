//! The audit log's backends: the SQL table (`sql/audit.rs`, the default) and MongoDB
//! (`mongo.rs`, production). Both store a record in the same flat shape, [`StoredRecord`]:
//! hashes as lowercase hex and `details` as the canonical JSON that was hashed, so a record
//! comes back byte for byte and its hash can be recomputed from any store. `activity.rs`
//! keeps the enriched activity log in MongoDB (the SQL table is `SqlStore`'s).

pub mod activity;
pub mod mongo;

pub use activity::{MongoActivityLog, MongoActivityOptions};
pub use mongo::{MongoAuditLog, MongoAuditOptions};

use ferrobank_application::StoreError;
use ferrobank_domain::audit::{
    AuditAction, AuditActor, AuditOutcome, AuditRecord, canonical_json, hash_hex, parse_hash,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A record as both backends store it (in MongoDB `seq` is the document's `_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredRecord {
    #[serde(rename = "_id")]
    pub seq: i64,
    pub id: String,
    pub at_ms: i64,
    pub actor_kind: String,
    pub actor_id: String,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

impl StoredRecord {
    /// The stored shape of `record`.
    pub fn from_record(record: &AuditRecord) -> Result<Self, StoreError> {
        Ok(Self {
            seq: i64::try_from(record.seq)
                .map_err(|_| StoreError::Corrupt(format!("audit seq {} overflows", record.seq)))?,
            id: record.id.to_string(),
            at_ms: record.at_ms,
            actor_kind: record.actor.kind().to_owned(),
            actor_id: record.actor.id().to_owned(),
            action: record.action.as_str().to_owned(),
            resource: record.resource.clone(),
            outcome: record.outcome.as_str().to_owned(),
            details: canonical_json(&record.details),
            prev_hash: hash_hex(&record.prev_hash),
            hash: hash_hex(&record.hash),
        })
    }

    /// Parses what was stored. Content is taken as found (not re-validated against the
    /// entry bounds), so `verify` judges an altered record by its hash; a field that does
    /// not parse at all is `Corrupt`, naming the record.
    pub fn into_record(self) -> Result<AuditRecord, StoreError> {
        let seq = self.seq;
        let corrupt = |what: String| {
            StoreError::Corrupt(format!("audit record seq {seq} (id {}): {what}", self.id))
        };
        Ok(AuditRecord {
            seq: u64::try_from(seq).map_err(|_| corrupt("negative seq".into()))?,
            id: Uuid::parse_str(&self.id).map_err(|e| corrupt(format!("id: {e}")))?,
            at_ms: self.at_ms,
            actor: AuditActor::from_parts(&self.actor_kind, &self.actor_id)
                .map_err(|e| corrupt(e.to_string()))?,
            action: AuditAction::parse(&self.action).map_err(|e| corrupt(e.to_string()))?,
            resource: self.resource.clone(),
            outcome: AuditOutcome::parse(&self.outcome).map_err(|e| corrupt(e.to_string()))?,
            details: serde_json::from_str(&self.details)
                .map_err(|e| corrupt(format!("details: {e}")))?,
            prev_hash: parse_hash("prev_hash", &self.prev_hash)
                .map_err(|e| corrupt(e.to_string()))?,
            hash: parse_hash("hash", &self.hash).map_err(|e| corrupt(e.to_string()))?,
        })
    }
}

/// `limit` within `1..=MAX_AUDIT_PAGE`.
pub(crate) fn page_limit(limit: u32) -> u32 {
    limit.clamp(1, ferrobank_application::MAX_AUDIT_PAGE)
}
