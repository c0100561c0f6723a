//! What the ledger needs from storage. One implementation (sqlx) serves SQLite and
//! PostgreSQL; the conformance suite in `ferrobank-adapters` runs against both.

use async_trait::async_trait;
use ferrobank_domain::{
    Account, AccountId, Balances, Book, LedgerTotals, Payment, PaymentId, Transfer, TransferId,
};

use crate::outbox::OutboxMessage;

/// A storage failure. Never caused by client input: input is validated before storage.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the connection broke.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness or serialization conflict with a concurrent writer; safe to retry.
    #[error("conflict with a concurrent writer: {0}")]
    Conflict(String),
    /// The schema is newer than this binary knows, or older and not migrated.
    #[error(
        "schema version {found} is not the expected {expected}; run `ferrobank migrate` or upgrade"
    )]
    SchemaMismatch {
        /// Version found in the database.
        found: i64,
        /// Version this binary was built for.
        expected: i64,
    },
    /// Stored data that does not parse: a bug or tampering, never input.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// One transfer in an account's history with that account's balances right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Commit sequence number; the pagination cursor.
    pub seq: i64,
    /// The transfer.
    pub transfer: Transfer,
    /// The account's balances after the transfer.
    pub balances_after: Balances,
}

/// A page of history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Entries, newest first.
    pub entries: Vec<HistoryEntry>,
    /// Pass as `before` to get the next (older) page; `None` at the end.
    pub next_before: Option<i64>,
}

/// A discrepancy found by `ledger verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyMismatch {
    /// Debits and credits of a ledger do not balance.
    LedgerUnbalanced {
        /// ISO 4217 numeric code.
        ledger: u16,
        /// The sums found.
        totals: LedgerTotals,
    },
    /// An account's stored balances differ from the sum of its transfers.
    AccountBalances {
        /// The account.
        account: AccountId,
        /// Balances stored on the account row.
        stored: Balances,
        /// Balances recomputed from its transfers.
        from_transfers: Balances,
    },
}

/// The result of checking the whole ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Totals per ledger.
    pub ledgers: Vec<(u16, LedgerTotals)>,
    /// Number of accounts whose balances were recomputed.
    pub accounts_checked: u64,
    /// Number of transfers read.
    pub transfers_checked: u64,
    /// Everything that did not add up; empty when the ledger is sound.
    pub mismatches: Vec<VerifyMismatch>,
}

/// Read access and transactions over the ledger's tables.
#[async_trait]
pub trait LedgerStore: Send + Sync + std::fmt::Debug + 'static {
    /// Starts a write transaction. Backends with a single writer serialize here.
    async fn begin(&self) -> Result<Box<dyn LedgerTx>, StoreError>;
    /// One account.
    async fn account(&self, id: AccountId) -> Result<Option<Account>, StoreError>;
    /// One transfer.
    async fn transfer(&self, id: TransferId) -> Result<Option<Transfer>, StoreError>;
    /// Transfers touching `account`, newest first, with `seq < before`.
    async fn history(
        &self,
        account: AccountId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<HistoryPage, StoreError>;
    /// Pending transfers whose timeout has passed at `now_ms`.
    async fn due_pending(&self, now_ms: i64, limit: u32) -> Result<Vec<TransferId>, StoreError>;
    /// Recomputes every account from its transfers and sums every ledger.
    async fn verify(&self) -> Result<VerifyReport, StoreError>;
    /// Cheap round trip for readiness.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// One write transaction. Dropping it without `commit` rolls it back.
#[async_trait]
pub trait LedgerTx: Send {
    /// Reads and locks accounts (row locks on PostgreSQL) in id order.
    async fn lock_accounts(&mut self, ids: &[AccountId]) -> Result<Vec<Account>, StoreError>;
    /// Reads transfers by id.
    async fn transfers(&mut self, ids: &[TransferId]) -> Result<Vec<Transfer>, StoreError>;
    /// Inserts a new account.
    async fn insert_account(&mut self, account: &Account) -> Result<(), StoreError>;
    /// Writes what a batch changed: balances, new transfers, resolved holds.
    async fn save_book(&mut self, book: &Book) -> Result<(), StoreError>;
    /// Appends events to the outbox.
    async fn append_outbox(&mut self, messages: &[OutboxMessage]) -> Result<(), StoreError>;
    /// Reads and locks payments (row locks on PostgreSQL) in id order.
    async fn lock_payments(&mut self, ids: &[PaymentId]) -> Result<Vec<Payment>, StoreError>;
    /// Inserts new payments.
    async fn insert_payments(&mut self, payments: &[&Payment]) -> Result<(), StoreError>;
    /// Writes the changed fields (status, hold, failure code, reviewer, updated time) of
    /// payments read with [`LedgerTx::lock_payments`].
    async fn update_payments(&mut self, payments: &[&Payment]) -> Result<(), StoreError>;
    /// Which of `event_ids` `consumer` has already processed.
    async fn inbox_seen(
        &mut self,
        consumer: &str,
        event_ids: &[String],
    ) -> Result<Vec<String>, StoreError>;
    /// Records that `consumer` processed `event_ids` (in the transaction of their effect).
    async fn record_inbox(
        &mut self,
        consumer: &str,
        event_ids: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Commits.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}
