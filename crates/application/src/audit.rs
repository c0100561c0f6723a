//! The audit log port: an append-only, hash-chained stream of audit records kept in a
//! document store (the SQL table by default, MongoDB in production). One conformance suite,
//! `ferrobank-adapters/tests/audit.rs`, runs against every backend.

use async_trait::async_trait;
use ferrobank_domain::audit::{
    AuditAction, AuditActor, AuditRecord, ChainBreak, FIRST_SEQ, NewAuditEntry, verify_after,
};
use ferrobank_domain::{Principal, Role};

use crate::ports::StoreError;

/// Most records one `read` or `query` returns.
pub const MAX_AUDIT_PAGE: u32 = 1_000;

/// Filters of [`AuditLog::query`]; every filter set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Exactly this actor.
    pub actor: Option<AuditActor>,
    /// Exactly this action.
    pub action: Option<AuditAction>,
    /// Exactly this resource.
    pub resource: Option<String>,
    /// `at_ms >= from_ms`.
    pub from_ms: Option<i64>,
    /// `at_ms < until_ms`.
    pub until_ms: Option<i64>,
    /// Cursor: only records with `seq > after_seq` (the previous page's `next_after`).
    pub after_seq: Option<u64>,
    /// Page size, capped at [`MAX_AUDIT_PAGE`].
    pub limit: u32,
}

/// A page of matching records in `seq` order.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    /// The records, oldest first.
    pub records: Vec<AuditRecord>,
    /// Pass as `after_seq` for the next page; `None` when this page was the last.
    pub next_after: Option<u64>,
}

/// Where audit records are kept. `append` assigns `seq` and links the record to the
/// chain's head atomically: concurrent appenders (tasks or processes) never fork the chain.
#[async_trait]
pub trait AuditLog: Send + Sync + std::fmt::Debug {
    /// Appends `entries` in order after the current head, atomically (all or none), and
    /// returns each as stored. An entry whose id is in the chain already (a redelivered
    /// event) is not appended again: its stored record is returned in its place, as it is
    /// for a second entry with the same id in `entries`. One call is one round of the
    /// chain's lock and one commit, which is what lets the audit consumer keep up with the
    /// events of thousands of payments a second.
    async fn append_all(&self, entries: Vec<NewAuditEntry>)
    -> Result<Vec<AuditRecord>, StoreError>;
    /// Appends one record after the current head and returns it as stored.
    async fn append(&self, entry: NewAuditEntry) -> Result<AuditRecord, StoreError> {
        self.append_all(vec![entry])
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("an append returned no record".into()))
    }
    /// Up to `limit` (capped at [`MAX_AUDIT_PAGE`]) records with `seq >= from_seq`, in
    /// `seq` order, exactly as stored (not verified: that is `audit::verify`'s job).
    async fn read(&self, from_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// Records matching `query`, in `seq` order, one page at a time.
    async fn query(&self, query: &AuditQuery) -> Result<AuditPage, StoreError>;
}

/// Whether `principal` may read the audit trail and the activity log: `compliance-officer`
/// only. `None` is authentication turned off (loopback development), where every caller
/// may, as for every other use case.
pub fn may_read_audit(principal: Option<&Principal>) -> bool {
    principal.is_none_or(|principal| principal.has_role(Role::ComplianceOfficer))
}

/// Reads the whole stream page by page and verifies the chain: the number of records, or
/// the first break. Memory stays bounded by one page.
pub async fn verify_log(log: &dyn AuditLog) -> Result<Result<u64, ChainBreak>, StoreError> {
    let mut last: Option<AuditRecord> = None;
    let mut count = 0_u64;
    loop {
        let from = last.as_ref().map_or(FIRST_SEQ, |record| record.seq + 1);
        let page = log.read(from, MAX_AUDIT_PAGE).await?;
        if page.is_empty() {
            return Ok(Ok(count));
        }
        match verify_after(last.as_ref(), &page) {
            Ok(verified) => count += verified,
            Err(error) => return Ok(Err(error)),
        }
        last = page.into_iter().next_back();
    }
}
