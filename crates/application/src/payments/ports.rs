//! What payments need from storage besides the write transaction ([`crate::LedgerTx`]).

use async_trait::async_trait;
use ferrobank_domain::{AccountId, Payment, PaymentId, PaymentStatus};

use crate::ports::StoreError;

/// Which payments to list; newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentQuery {
    /// Only this debtor account's.
    pub account: Option<AccountId>,
    /// Only those in one of these statuses (empty: any).
    pub statuses: Vec<PaymentStatus>,
    /// Only those created at or after this time, Unix milliseconds.
    pub from_ms: Option<i64>,
    /// Only those created before this time, Unix milliseconds.
    pub until_ms: Option<i64>,
    /// The cursor: only those listed after this position (`next_before` of a page).
    pub before_seq: Option<i64>,
    /// Most payments in the page.
    pub limit: u32,
}

/// One page of payments, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentPage {
    /// The payments.
    pub payments: Vec<Payment>,
    /// Pass as `before_seq` for the next (older) page; `None` at the end.
    pub next_before: Option<i64>,
}

/// An event waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Commit order of the row; the relay publishes in this order per subject.
    pub seq: i64,
    /// The event id.
    pub event_id: String,
    /// The event type.
    pub kind: String,
    /// The event body (JSON text).
    pub payload: String,
    /// When the change committed, Unix milliseconds.
    pub created_at_ms: i64,
    /// The ordering key (an account id); `None` on rows written before subjects existed.
    pub subject: Option<String>,
    /// The W3C traceparent of the request that caused it.
    pub traceparent: Option<String>,
}

/// Reads of the payments table.
#[async_trait]
pub trait PaymentStore: Send + Sync + std::fmt::Debug + 'static {
    /// One payment.
    async fn payment(&self, id: PaymentId) -> Result<Option<Payment>, StoreError>;
    /// A page of payments.
    async fn payments(&self, query: &PaymentQuery) -> Result<PaymentPage, StoreError>;
    /// Whether `owner` paid `beneficiary_key` before (a payment that was not refused,
    /// cancelled or failed).
    async fn beneficiary_seen(
        &self,
        owner: &str,
        beneficiary_key: &str,
    ) -> Result<bool, StoreError>;
    /// Payments in `statuses` whose status has not changed since before `updated_before_ms`:
    /// work a crashed worker or a lost message left behind. Oldest first.
    async fn stale(
        &self,
        statuses: &[PaymentStatus],
        updated_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<Payment>, StoreError>;
    /// Payments per status, for metrics.
    async fn count_by_status(&self) -> Result<Vec<(PaymentStatus, u64)>, StoreError>;
}

/// The relay's side of the outbox.
#[async_trait]
pub trait OutboxStore: Send + Sync + std::fmt::Debug + 'static {
    /// Claims the oldest unpublished rows (up to `limit`) for this relay: `None` while
    /// another relay holds the outbox. The claim lasts until it is finished or dropped.
    async fn claim_outbox(&self, limit: u32) -> Result<Option<Box<dyn OutboxClaim>>, StoreError>;
    /// Waits until a transaction that wrote the outbox commits (in this process, or on
    /// PostgreSQL in any process), or at most `max_wait_ms`.
    async fn outbox_changed(&self, max_wait_ms: u64);
    /// Rows not yet published.
    async fn outbox_backlog(&self) -> Result<u64, StoreError>;
    /// Deletes rows published before `before_ms`; returns how many.
    async fn purge_outbox(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Deletes consumers' inbox rows processed before `before_ms`; returns how many. Past
    /// the outbox's retention no event is published again, and a payment's final status
    /// answers any copy the broker might still hold.
    async fn purge_inbox(&self, before_ms: i64) -> Result<u64, StoreError>;
}

/// Rows claimed by one relay, in `seq` order.
#[async_trait]
pub trait OutboxClaim: Send {
    /// The claimed rows, oldest first.
    fn rows(&self) -> &[OutboxRow];
    /// Marks `seqs` published at `now_ms` and releases the claim.
    async fn finish(self: Box<Self>, seqs: &[i64], now_ms: i64) -> Result<(), StoreError>;
}
