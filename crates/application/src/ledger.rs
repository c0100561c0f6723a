//! The ledger service: open accounts, create transfers through group commit, expire
//! holds, read balances and history, verify the invariant.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ferrobank_domain::{
    Account, AccountId, Book, LedgerEvent, NewAccount, NewTransfer, Principal, Transfer,
    TransferError, TransferId, TransferOutcome,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::access;
use crate::clock::Clock;
use crate::outbox::OutboxMessage;
use crate::payments::PAYMENT_TRANSFER_CODE;
use crate::ports::{HistoryPage, LedgerStore, StoreError, VerifyReport};

/// Bounds of the ledger service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerLimits {
    /// Requests waiting for the writer; beyond this, callers get `Busy` (HTTP 503).
    pub queue_capacity: usize,
    /// Most transfers committed in one database transaction.
    pub max_batch_transfers: usize,
    /// Most transfers in one request.
    pub max_request_transfers: usize,
    /// How often the writer looks for expired holds.
    pub expiry_interval_ms: u64,
}

impl Default for LedgerLimits {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            max_batch_transfers: 2048,
            max_request_transfers: 1000,
            expiry_interval_ms: 1000,
        }
    }
}

/// Failures of a ledger use case that are not a refusal of one transfer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The transfer queue is full; retry after a moment.
    #[error("the ledger is busy; retry shortly")]
    Busy,
    /// The service is shutting down.
    #[error("the ledger is shutting down")]
    ShuttingDown,
    /// Too many transfers in one request.
    #[error("a request may carry at most {max} transfers")]
    TooManyTransfers {
        /// The limit.
        max: usize,
    },
    /// The caller may not open an account for this owner.
    #[error("you may only open accounts that you own")]
    Forbidden,
    /// An account with this id exists with other fields.
    #[error("an account with this id exists with different fields")]
    AccountExistsWithDifferentFields,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result of opening an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenOutcome {
    /// A new account.
    Created(Account),
    /// The same account already existed (an idempotent retry).
    Exists(Account),
}

type TransferResults = Vec<Result<TransferOutcome, TransferError>>;

/// Attempts at committing one batch when it loses a race with a concurrent writer.
const MAX_BATCH_ATTEMPTS: usize = 3;
/// Attempts at opening an account when a concurrent open of the same id wins the insert.
const MAX_OPEN_ATTEMPTS: usize = 3;

struct Job {
    requests: Vec<NewTransfer>,
    reply: oneshot::Sender<Result<TransferResults, LedgerError>>,
}

/// Entry point of every ledger use case. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LedgerService {
    store: Arc<dyn LedgerStore>,
    clock: Arc<dyn Clock>,
    queue: mpsc::Sender<Job>,
    limits: LedgerLimits,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("transfers", &self.requests.len()).finish()
    }
}

impl LedgerService {
    /// Starts the writer task and returns the service and the writer's handle. The
    /// writer stops once every clone of the service is dropped and the queue is drained.
    pub fn start(
        store: Arc<dyn LedgerStore>,
        clock: Arc<dyn Clock>,
        limits: LedgerLimits,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, jobs) = mpsc::channel(limits.queue_capacity.max(1));
        let writer = Writer { store: store.clone(), clock: clock.clone(), limits };
        let handle = tokio::spawn(writer.run(jobs));
        (Self { store, clock, queue, limits }, handle)
    }

    /// The limits the service runs with.
    pub fn limits(&self) -> LedgerLimits {
        self.limits
    }

    /// Requests currently waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Opens an account; opening the same account again returns it unchanged.
    pub async fn open_account(&self, new: NewAccount) -> Result<OpenOutcome, LedgerError> {
        // Two opens of one new id (a retry racing the original) both find no row to lock
        // on PostgreSQL; the loser's insert conflicts, and running it again finds the
        // winner's account: `Exists`, not a 503.
        let mut attempt = 1;
        loop {
            match self.try_open_account(&new).await {
                Err(LedgerError::Store(StoreError::Conflict(_))) if attempt < MAX_OPEN_ATTEMPTS => {
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn try_open_account(&self, new: &NewAccount) -> Result<OpenOutcome, LedgerError> {
        let mut tx = self.store.begin().await?;
        if let Some(existing) = tx.lock_accounts(&[new.id]).await?.pop() {
            return if existing.matches(new) {
                Ok(OpenOutcome::Exists(existing))
            } else {
                Err(LedgerError::AccountExistsWithDifferentFields)
            };
        }
        let account = Account::open(new.clone(), self.clock.now_ms());
        tx.insert_account(&account).await?;
        let event = LedgerEvent::AccountOpened(account.clone());
        tx.append_outbox(&[OutboxMessage::from_event(&event)]).await?;
        tx.commit().await?;
        Ok(OpenOutcome::Created(account))
    }

    /// Commits a request of transfers through the group-commit queue. Each transfer
    /// gets its own result; linked chains commit all or nothing.
    pub async fn create_transfers(
        &self,
        requests: Vec<NewTransfer>,
    ) -> Result<TransferResults, LedgerError> {
        let max = self.limits.max_request_transfers;
        if requests.len() > max {
            return Err(LedgerError::TooManyTransfers { max });
        }
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, result) = oneshot::channel();
        self.queue.try_send(Job { requests, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LedgerError::Busy,
            mpsc::error::TrySendError::Closed(_) => LedgerError::ShuttingDown,
        })?;
        metrics::gauge!("ferrobank_ledger_queue_depth").set(self.queue_depth() as f64);
        result.await.map_err(|_| LedgerError::ShuttingDown)?
    }

    /// One account.
    pub async fn account(&self, id: AccountId) -> Result<Option<Account>, LedgerError> {
        Ok(self.store.account(id).await?)
    }

    /// One transfer.
    pub async fn transfer(&self, id: TransferId) -> Result<Option<Transfer>, LedgerError> {
        Ok(self.store.transfer(id).await?)
    }

    /// An account's history, newest first.
    pub async fn history(
        &self,
        account: AccountId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<HistoryPage, LedgerError> {
        Ok(self.store.history(account, before, limit).await?)
    }

    /// Opens an account on behalf of `caller` (`None`: authentication is off, anyone may).
    pub async fn open_account_as(
        &self,
        caller: Option<&Principal>,
        new: NewAccount,
    ) -> Result<OpenOutcome, LedgerError> {
        if caller.is_some_and(|p| !access::may_open(p, &new.owner)) {
            return Err(LedgerError::Forbidden);
        }
        self.open_account(new).await
    }

    /// One account, if it exists and `caller` may see it (`None`: authentication is off).
    pub async fn account_as(
        &self,
        caller: Option<&Principal>,
        id: AccountId,
    ) -> Result<Option<Account>, LedgerError> {
        let account = self.store.account(id).await?;
        Ok(account.filter(|a| caller.is_none_or(|p| access::may_read(p, a))))
    }

    /// One transfer, if it exists and `caller` may see its debit or its credit account.
    pub async fn transfer_as(
        &self,
        caller: Option<&Principal>,
        id: TransferId,
    ) -> Result<Option<Transfer>, LedgerError> {
        let Some(transfer) = self.store.transfer(id).await? else {
            return Ok(None);
        };
        let Some(principal) = caller else {
            return Ok(Some(transfer));
        };
        for account in [transfer.debit_account_id, transfer.credit_account_id] {
            if self.store.account(account).await?.is_some_and(|a| access::may_read(principal, &a)) {
                return Ok(Some(transfer));
            }
        }
        Ok(None)
    }

    /// [`Self::create_transfers`] on behalf of `caller` (`None`: authentication is off).
    /// A transfer whose debit account (or, for a post or void, whose hold's debit account)
    /// the caller may not debit is refused exactly as if that account or hold did not
    /// exist, before anything is enqueued; a refused transfer fails its whole linked chain,
    /// as any refusal inside the book would. For every caller, the payments' transfer code
    /// is refused (`reserved_code`) and a payment's hold cannot be posted or voided.
    pub async fn create_transfers_as(
        &self,
        caller: Option<&Principal>,
        requests: Vec<NewTransfer>,
    ) -> Result<TransferResults, LedgerError> {
        let max = self.limits.max_request_transfers;
        if requests.len() > max {
            return Err(LedgerError::TooManyTransfers { max });
        }
        let mut refusals = Vec::with_capacity(requests.len());
        for request in &requests {
            refusals.push(self.refusal(caller, request).await?);
        }
        if refusals.iter().all(Option::is_none) {
            return self.create_transfers(requests).await;
        }
        let mut results: Vec<Option<Result<TransferOutcome, TransferError>>> =
            (0..requests.len()).map(|_| None).collect();
        let mut start = 0;
        for (end, request) in requests.iter().enumerate() {
            if request.linked && end + 1 < requests.len() {
                continue;
            }
            if refusals[start..=end].iter().any(Option::is_some) {
                for (result, refusal) in results[start..=end].iter_mut().zip(&refusals[start..=end])
                {
                    *result = Some(Err(refusal.unwrap_or(TransferError::LinkedEventFailed)));
                }
            }
            start = end + 1;
        }
        let (indices, allowed): (Vec<usize>, Vec<NewTransfer>) =
            requests.into_iter().enumerate().filter(|(i, _)| results[*i].is_none()).unzip();
        let committed = self.create_transfers(allowed).await?;
        for (i, result) in indices.into_iter().zip(committed) {
            results[i] = Some(result);
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Err(TransferError::LinkedEventFailed)))
            .collect())
    }

    /// Why `caller` may not make `request`: the payments' transfer code, a payment's hold,
    /// or (with a caller) an account or hold it may not debit, refused as the error a
    /// missing account or hold gives.
    ///
    /// Checked before the writer commits, outside its transaction: this is not a race,
    /// because an account's owner never changes after it is opened and a transfer's debit
    /// account and code never change either, so what is read here is what the writer will
    /// lock.
    async fn refusal(
        &self,
        caller: Option<&Principal>,
        request: &NewTransfer,
    ) -> Result<Option<TransferError>, LedgerError> {
        // The payments service alone makes transfers with its code: a payment's hold, and
        // the post or void that IS the payment's settlement. Voided here, a customer could
        // release the funds of a payment the gateway then pays out. So through the ledger
        // API the code is refused and such a hold is as unknown as another customer's.
        let held = match request.kind.pending_id() {
            Some(pending) => match self.store.transfer(pending).await? {
                Some(held) if held.code == PAYMENT_TRANSFER_CODE => {
                    return Ok(Some(TransferError::PendingTransferNotFound));
                }
                held => Some(held),
            },
            None => None,
        };
        if request.code == PAYMENT_TRANSFER_CODE {
            return Ok(Some(TransferError::ReservedCode));
        }
        let Some(principal) = caller else { return Ok(None) };
        let (debit, refusal) = match held {
            Some(held) => {
                (held.map(|t| t.debit_account_id), TransferError::PendingTransferNotFound)
            }
            // No debit account: the book refuses the request on its own.
            None if request.debit_account_id.is_none() => return Ok(None),
            None => (request.debit_account_id, TransferError::DebitAccountNotFound),
        };
        let allowed = match debit {
            Some(id) => {
                self.store.account(id).await?.is_some_and(|a| access::may_debit(principal, &a))
            }
            None => false,
        };
        Ok((!allowed).then_some(refusal))
    }

    /// Checks the ledger invariant and every account against its transfers.
    pub async fn verify(&self) -> Result<VerifyReport, LedgerError> {
        Ok(self.store.verify().await?)
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), LedgerError> {
        Ok(self.store.ping().await?)
    }
}

/// The single writer: drains the queue into batches, one transaction per batch.
struct Writer {
    store: Arc<dyn LedgerStore>,
    clock: Arc<dyn Clock>,
    limits: LedgerLimits,
}

impl Writer {
    async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let mut expiry =
            tokio::time::interval(Duration::from_millis(self.limits.expiry_interval_ms.max(10)));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                job = jobs.recv() => match job {
                    Some(first) => self.commit_jobs(first, &mut jobs).await,
                    None => break,
                },
                _ = expiry.tick() => {
                    if let Err(error) = self.expire_due().await {
                        tracing::warn!(%error, "expiring pending transfers failed; will retry");
                    }
                }
            }
        }
        tracing::info!("ledger writer stopped: queue closed and drained");
    }

    async fn commit_jobs(&self, first: Job, jobs: &mut mpsc::Receiver<Job>) {
        let mut count = first.requests.len();
        let mut batch = vec![first];
        while count < self.limits.max_batch_transfers {
            match jobs.try_recv() {
                Ok(job) => {
                    count += job.requests.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        metrics::histogram!("ferrobank_ledger_batch_transfers").record(count as f64);
        metrics::gauge!("ferrobank_ledger_queue_depth").set(jobs.len() as f64);
        let requests: Vec<&[NewTransfer]> = batch.iter().map(|j| j.requests.as_slice()).collect();
        let mut committed = self.commit_batch(&requests).await;
        // A conflict means another writer (a second replica on PostgreSQL) committed one of
        // our ids or rows first. The batch rolled back as a whole; running it again re-reads
        // the state, so a transfer that now exists comes back as `exists`, not as an error.
        for _ in 1..MAX_BATCH_ATTEMPTS {
            if !matches!(committed, Err(StoreError::Conflict(_))) {
                break;
            }
            metrics::counter!("ferrobank_ledger_batch_retries_total").increment(1);
            committed = self.commit_batch(&requests).await;
        }
        match committed {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    // The caller may have gone away (client disconnected); its transfers
                    // are committed regardless and a retry with the same ids finds them.
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(error) => {
                tracing::error!(%error, transfers = count, "batch commit failed");
                metrics::counter!("ferrobank_ledger_batch_failures_total").increment(1);
                for job in batch {
                    let _ = job.reply.send(Err(LedgerError::Store(error.clone())));
                }
            }
        }
    }

    async fn commit_batch(
        &self,
        batch: &[&[NewTransfer]],
    ) -> Result<Vec<TransferResults>, StoreError> {
        let now_ms = self.clock.now_ms();
        let mut tx = self.store.begin().await?;
        let transfer_ids: BTreeSet<TransferId> = batch
            .iter()
            .flat_map(|requests| requests.iter())
            .flat_map(|r| std::iter::once(r.id).chain(r.kind.pending_id()))
            .collect();
        let transfer_ids: Vec<TransferId> = transfer_ids.into_iter().collect();
        // Learn the accounts of referenced holds first, lock every account, then read the
        // transfers again: a hold's status only changes under its accounts' locks, so the
        // second read is current even with several writers on one PostgreSQL.
        let mut account_ids: BTreeSet<AccountId> = tx
            .transfers(&transfer_ids)
            .await?
            .iter()
            .flat_map(|t| [t.debit_account_id, t.credit_account_id])
            .collect();
        for r in batch.iter().flat_map(|requests| requests.iter()) {
            account_ids.extend(r.debit_account_id);
            account_ids.extend(r.credit_account_id);
        }
        let account_ids: Vec<AccountId> = account_ids.into_iter().collect();
        let accounts = tx.lock_accounts(&account_ids).await?;
        let transfers = tx.transfers(&transfer_ids).await?;
        let mut book = Book::new(accounts, transfers);
        let results: Vec<TransferResults> =
            batch.iter().map(|requests| book.apply(requests, now_ms)).collect();
        if book.events().is_empty() {
            return Ok(results);
        }
        tx.save_book(&book).await?;
        let messages: Vec<OutboxMessage> =
            book.events().iter().map(OutboxMessage::from_event).collect();
        tx.append_outbox(&messages).await?;
        tx.commit().await?;
        Ok(results)
    }

    /// Voids holds whose timeout passed, each with a new void transfer.
    async fn expire_due(&self) -> Result<usize, StoreError> {
        const MAX_EXPIRED_PER_SWEEP: u32 = 1000;
        let now_ms = self.clock.now_ms();
        let due = self.store.due_pending(now_ms, MAX_EXPIRED_PER_SWEEP).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut tx = self.store.begin().await?;
        let pending = tx.transfers(&due).await?;
        let mut account_ids: Vec<AccountId> =
            pending.iter().flat_map(|t| [t.debit_account_id, t.credit_account_id]).collect();
        account_ids.sort();
        account_ids.dedup();
        let accounts = tx.lock_accounts(&account_ids).await?;
        let mut book = Book::new(accounts, tx.transfers(&due).await?);
        let expired = due
            .iter()
            .filter_map(|id| book.expire(*id, TransferId(Uuid::now_v7()), now_ms))
            .count();
        if expired > 0 {
            tx.save_book(&book).await?;
            let messages: Vec<OutboxMessage> =
                book.events().iter().map(OutboxMessage::from_event).collect();
            tx.append_outbox(&messages).await?;
            tx.commit().await?;
            metrics::counter!("ferrobank_ledger_expired_holds_total").increment(expired as u64);
            tracing::info!(expired, "voided expired holds");
        }
        Ok(expired)
    }
}
