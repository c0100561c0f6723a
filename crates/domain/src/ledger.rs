//! The double-entry ledger, modelled on TigerBeetle's accounts and transfers.
//!
//! A [`Book`] holds the accounts and transfers one batch touches. Applying a request
//! validates it completely before changing anything, so a refused transfer leaves the book
//! untouched; a linked chain is applied on a copy and kept only when every link succeeds.
//! The storage layer loads a book, applies a batch, and writes back what changed.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::{Amount, Currency};

/// Identifies an account; chosen by the client or generated at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub Uuid);

/// Identifies a transfer; always chosen by the client, which makes retries idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TransferId(pub Uuid);

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for TransferId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Balance limits and state of an account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountFlags {
    /// The account may never be overdrawn: debits (pending + posted) <= posted credits.
    /// Typical for a customer's deposit account.
    pub debits_must_not_exceed_credits: bool,
    /// Credits (pending + posted) <= posted debits; e.g. a loan or a prepaid limit.
    pub credits_must_not_exceed_debits: bool,
    /// A closed account takes no new transfers.
    pub closed: bool,
}

impl AccountFlags {
    const DEBITS_MUST_NOT_EXCEED_CREDITS: i64 = 1;
    const CREDITS_MUST_NOT_EXCEED_DEBITS: i64 = 2;
    const CLOSED: i64 = 4;

    /// The flags as a bit set, for storage.
    pub fn bits(self) -> i64 {
        let mut bits = 0;
        if self.debits_must_not_exceed_credits {
            bits |= Self::DEBITS_MUST_NOT_EXCEED_CREDITS;
        }
        if self.credits_must_not_exceed_debits {
            bits |= Self::CREDITS_MUST_NOT_EXCEED_DEBITS;
        }
        if self.closed {
            bits |= Self::CLOSED;
        }
        bits
    }

    /// The flags from their stored bit set.
    pub fn from_bits(bits: i64) -> Self {
        Self {
            debits_must_not_exceed_credits: bits & Self::DEBITS_MUST_NOT_EXCEED_CREDITS != 0,
            credits_must_not_exceed_debits: bits & Self::CREDITS_MUST_NOT_EXCEED_DEBITS != 0,
            closed: bits & Self::CLOSED != 0,
        }
    }
}

/// The four balances of an account, in minor units; each is a sum of transfer amounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balances {
    /// Sum of pending (held, not yet posted or voided) debits.
    pub debits_pending: i64,
    /// Sum of posted debits.
    pub debits_posted: i64,
    /// Sum of pending credits.
    pub credits_pending: i64,
    /// Sum of posted credits.
    pub credits_posted: i64,
}

impl Balances {
    /// Posted balance of a credit-normal account: posted credits minus posted debits.
    pub fn posted(&self) -> i128 {
        i128::from(self.credits_posted) - i128::from(self.debits_posted)
    }

    /// Net pending movement: pending credits minus pending debits.
    pub fn pending(&self) -> i128 {
        i128::from(self.credits_pending) - i128::from(self.debits_pending)
    }

    /// What the owner can spend now: the posted balance minus holds (pending debits).
    /// Pending credits are not available until they are posted.
    pub fn available(&self) -> i128 {
        self.posted() - i128::from(self.debits_pending)
    }
}

/// Fields a client supplies to open an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    /// The account's id.
    pub id: AccountId,
    /// Its currency, which fixes its ledger.
    pub currency: Currency,
    /// Account type as the bank's chart of accounts numbers it (e.g. 1 = customer current).
    pub code: u16,
    /// Reference to the owner (customer id, or a bank-internal owner such as `bank`).
    pub owner: String,
    /// Balance limits.
    pub flags: AccountFlags,
}

/// An account with its balances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The account's id.
    pub id: AccountId,
    /// Its currency; the ledger is `currency.ledger()`.
    pub currency: Currency,
    /// Account type.
    pub code: u16,
    /// Owner reference.
    pub owner: String,
    /// Limits and state.
    pub flags: AccountFlags,
    /// Current balances.
    pub balances: Balances,
    /// When it was opened, in Unix milliseconds.
    pub created_at_ms: i64,
}

impl Account {
    /// A new account with zero balances.
    pub fn open(new: NewAccount, now_ms: i64) -> Self {
        Self {
            id: new.id,
            currency: new.currency,
            code: new.code,
            owner: new.owner,
            flags: new.flags,
            balances: Balances::default(),
            created_at_ms: now_ms,
        }
    }

    /// True when `new` asks for exactly this account (an idempotent retry).
    pub fn matches(&self, new: &NewAccount) -> bool {
        self.id == new.id
            && self.currency == new.currency
            && self.code == new.code
            && self.owner == new.owner
            && self.flags == new.flags
    }
}

/// What a transfer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    /// Moves money at once (single-phase).
    Posted,
    /// Places a hold; voids itself after `timeout_s` seconds (0 = never).
    Pending {
        /// Seconds until the hold expires; 0 means it never does.
        timeout_s: u32,
    },
    /// Posts a pending transfer, in full or in part.
    PostPending {
        /// The pending transfer to post.
        pending_id: TransferId,
    },
    /// Voids a pending transfer, releasing the hold.
    VoidPending {
        /// The pending transfer to void.
        pending_id: TransferId,
    },
}

impl TransferKind {
    /// The pending transfer this one resolves, if any.
    pub fn pending_id(self) -> Option<TransferId> {
        match self {
            Self::PostPending { pending_id } | Self::VoidPending { pending_id } => Some(pending_id),
            Self::Posted | Self::Pending { .. } => None,
        }
    }
}

/// A transfer request as the client sent it.
///
/// For `PostPending` and `VoidPending` the accounts, amount and currency may be left out
/// and are then taken from the pending transfer; when given they must match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransfer {
    /// Client-chosen id; the idempotency key of the transfer.
    pub id: TransferId,
    /// Account debited.
    pub debit_account_id: Option<AccountId>,
    /// Account credited.
    pub credit_account_id: Option<AccountId>,
    /// Amount in minor units; for a post, less than the pending amount posts in part.
    pub amount: Option<Amount>,
    /// The currency the client expects both accounts to hold.
    pub currency: Option<Currency>,
    /// Transfer type as the bank numbers it (e.g. 1 = customer payment).
    pub code: u16,
    /// What the transfer does.
    pub kind: TransferKind,
    /// Links this transfer to the next one in the request: all commit or none does.
    pub linked: bool,
}

/// Resolution state of a pending transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingStatus {
    /// Still holding funds.
    Pending,
    /// Posted (in full or in part).
    Posted,
    /// Voided by a client.
    Voided,
    /// Voided by its timeout.
    Expired,
}

impl PendingStatus {
    /// Stable storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Posted => "posted",
            Self::Voided => "voided",
            Self::Expired => "expired",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "posted" => Self::Posted,
            "voided" => Self::Voided,
            "expired" => Self::Expired,
            _ => return None,
        })
    }
}

/// A committed transfer. Its fields never change; only a pending transfer's
/// `pending_status` moves from `Pending` to one final state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Client-chosen id.
    pub id: TransferId,
    /// Account debited.
    pub debit_account_id: AccountId,
    /// Account credited.
    pub credit_account_id: AccountId,
    /// Amount moved (or held, or posted) in minor units.
    pub amount: Amount,
    /// Currency of both accounts.
    pub currency: Currency,
    /// Transfer type.
    pub code: u16,
    /// What it did.
    pub kind: TransferKind,
    /// Whether it was linked to the next transfer of its request.
    pub linked: bool,
    /// The request's amount, kept to recognise an idempotent retry of a post.
    pub requested_amount: Option<Amount>,
    /// Commit time, Unix milliseconds.
    pub created_at_ms: i64,
    /// For a pending transfer with a timeout: when it expires.
    pub expires_at_ms: Option<i64>,
    /// For a pending transfer: where it stands.
    pub pending_status: Option<PendingStatus>,
    /// Balances of the debit account right after this transfer.
    pub debit_balances_after: Balances,
    /// Balances of the credit account right after this transfer.
    pub credit_balances_after: Balances,
}

impl Transfer {
    /// True when `req` is a retry of the request that created this transfer.
    pub fn matches(&self, req: &NewTransfer) -> bool {
        fn same<T: PartialEq>(given: Option<T>, stored: T) -> bool {
            given.is_none_or(|g| g == stored)
        }
        // Posts and voids may omit accounts and currency; plain transfers always carry them.
        self.id == req.id
            && same(req.debit_account_id, self.debit_account_id)
            && same(req.credit_account_id, self.credit_account_id)
            && same(req.currency, self.currency)
            && req.amount == self.requested_amount
            && req.code == self.code
            && req.kind == self.kind
            && req.linked == self.linked
    }
}

/// Why a transfer was refused. The `code` of each variant is a stable API identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Plain and pending transfers need both accounts and an amount.
    #[error("debit_account_id, credit_account_id, amount and currency are required")]
    MissingField,
    /// Debit and credit account are the same.
    #[error("debit and credit account must differ")]
    AccountsMustBeDifferent,
    /// Unknown debit account.
    #[error("debit account does not exist")]
    DebitAccountNotFound,
    /// Unknown credit account.
    #[error("credit account does not exist")]
    CreditAccountNotFound,
    /// The accounts hold different currencies.
    #[error("debit and credit account hold different currencies")]
    AccountsMustHaveSameCurrency,
    /// The transfer's currency is not the accounts' currency.
    #[error("transfer currency does not match the accounts' currency")]
    CurrencyMismatch,
    /// Debit account is closed.
    #[error("debit account is closed")]
    DebitAccountClosed,
    /// Credit account is closed.
    #[error("credit account is closed")]
    CreditAccountClosed,
    /// The debit account would be overdrawn (`debits_must_not_exceed_credits`).
    #[error("insufficient funds: debits would exceed credits")]
    ExceedsCredits,
    /// The credit account would exceed its limit (`credits_must_not_exceed_debits`).
    #[error("credits would exceed debits on the credit account")]
    ExceedsDebits,
    /// A balance would pass i64::MAX minor units.
    #[error("a balance would overflow")]
    Overflow,
    /// The transfer to post or void does not exist.
    #[error("pending transfer does not exist")]
    PendingTransferNotFound,
    /// The transfer to post or void is not a pending transfer.
    #[error("referenced transfer is not pending")]
    PendingTransferNotPending,
    /// Already posted.
    #[error("pending transfer was already posted")]
    PendingTransferAlreadyPosted,
    /// Already voided.
    #[error("pending transfer was already voided")]
    PendingTransferAlreadyVoided,
    /// Its timeout passed.
    #[error("pending transfer expired")]
    PendingTransferExpired,
    /// Accounts or currency differ from the pending transfer's.
    #[error("fields differ from the pending transfer")]
    PendingTransferMismatch,
    /// Posting more than was held.
    #[error("amount exceeds the pending amount")]
    ExceedsPendingAmount,
    /// A void must release the whole hold.
    #[error("a void releases the full pending amount; omit amount or give it exactly")]
    VoidAmountMismatch,
    /// The id is taken by a transfer with different fields.
    #[error("a transfer with this id exists with different fields")]
    ExistsWithDifferentFields,
    /// Another transfer of the same linked chain failed.
    #[error("another transfer in the linked chain failed")]
    LinkedEventFailed,
    /// The last transfer of a request is marked `linked`.
    #[error("the last transfer of a request must not be linked")]
    LinkedEventChainOpen,
    /// The transfer code is reserved for transfers the platform makes itself (a payment's
    /// hold, post and void).
    #[error("this transfer code is reserved for payments")]
    ReservedCode,
}

impl TransferError {
    /// Stable machine-readable code (also the last segment of the problem type URI).
    pub fn code(self) -> &'static str {
        match self {
            Self::MissingField => "missing_field",
            Self::AccountsMustBeDifferent => "accounts_must_be_different",
            Self::DebitAccountNotFound => "debit_account_not_found",
            Self::CreditAccountNotFound => "credit_account_not_found",
            Self::AccountsMustHaveSameCurrency => "accounts_must_have_same_currency",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::DebitAccountClosed => "debit_account_closed",
            Self::CreditAccountClosed => "credit_account_closed",
            Self::ExceedsCredits => "insufficient_funds",
            Self::ExceedsDebits => "exceeds_debits",
            Self::Overflow => "balance_overflow",
            Self::PendingTransferNotFound => "pending_transfer_not_found",
            Self::PendingTransferNotPending => "pending_transfer_not_pending",
            Self::PendingTransferAlreadyPosted => "pending_transfer_already_posted",
            Self::PendingTransferAlreadyVoided => "pending_transfer_already_voided",
            Self::PendingTransferExpired => "pending_transfer_expired",
            Self::PendingTransferMismatch => "pending_transfer_mismatch",
            Self::ExceedsPendingAmount => "exceeds_pending_amount",
            Self::VoidAmountMismatch => "void_amount_mismatch",
            Self::ExistsWithDifferentFields => "exists_with_different_fields",
            Self::LinkedEventFailed => "linked_event_failed",
            Self::LinkedEventChainOpen => "linked_event_chain_open",
            Self::ReservedCode => "reserved_code",
        }
    }
}

/// The result of one accepted transfer request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    /// Newly committed.
    Created(Transfer),
    /// An identical transfer already existed; this is it, unchanged.
    Exists(Transfer),
}

impl TransferOutcome {
    /// The transfer, whether new or existing.
    pub fn transfer(&self) -> &Transfer {
        match self {
            Self::Created(t) | Self::Exists(t) => t,
        }
    }
}

/// A state change to announce through the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerEvent {
    /// `account.opened`
    AccountOpened(Account),
    /// `transfer.created`: a posted or pending transfer.
    TransferCreated(Transfer),
    /// `transfer.posted`: a pending transfer was posted by this transfer.
    TransferPosted(Transfer),
    /// `transfer.voided`: a pending transfer was voided by a client or by its timeout.
    TransferVoided {
        /// The void transfer.
        transfer: Transfer,
        /// True when the timeout voided it.
        expired: bool,
    },
}

impl LedgerEvent {
    /// The event type name used on the bus.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AccountOpened(_) => "account.opened",
            Self::TransferCreated(_) => "transfer.created",
            Self::TransferPosted(_) => "transfer.posted",
            Self::TransferVoided { .. } => "transfer.voided",
        }
    }
}

/// The accounts and transfers a batch touches, and what the batch changed.
#[derive(Debug, Clone, Default)]
pub struct Book {
    accounts: HashMap<AccountId, Account>,
    transfers: HashMap<TransferId, Transfer>,
    changed_accounts: BTreeSet<AccountId>,
    resolved_pending: Vec<TransferId>,
    created: Vec<TransferId>,
    events: Vec<LedgerEvent>,
}

impl Book {
    /// A book over the given accounts and already-committed transfers.
    pub fn new(accounts: Vec<Account>, transfers: Vec<Transfer>) -> Self {
        Self {
            accounts: accounts.into_iter().map(|a| (a.id, a)).collect(),
            transfers: transfers.into_iter().map(|t| (t.id, t)).collect(),
            ..Self::default()
        }
    }

    /// An account held by the book.
    pub fn account(&self, id: AccountId) -> Option<&Account> {
        self.accounts.get(&id)
    }

    /// A transfer held by the book.
    pub fn transfer(&self, id: TransferId) -> Option<&Transfer> {
        self.transfers.get(&id)
    }

    /// All accounts held by the book.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// Accounts whose balances changed, in id order (the storage layer's lock order).
    pub fn changed_accounts(&self) -> impl Iterator<Item = &Account> {
        self.changed_accounts.iter().filter_map(|id| self.accounts.get(id))
    }

    /// Transfers created by this batch, in commit order.
    pub fn created_transfers(&self) -> impl Iterator<Item = &Transfer> {
        self.created.iter().filter_map(|id| self.transfers.get(id))
    }

    /// Pending transfers this batch posted, voided or expired.
    pub fn resolved_pending(&self) -> impl Iterator<Item = &Transfer> {
        self.resolved_pending.iter().filter_map(|id| self.transfers.get(id))
    }

    /// Events to write to the outbox, in order.
    pub fn events(&self) -> &[LedgerEvent] {
        &self.events
    }

    /// Applies one request: a list of transfers where `linked` chains neighbours.
    ///
    /// Every transfer gets its own result. A chain commits all or nothing: when one link
    /// fails, it reports its own error and the others report `LinkedEventFailed`.
    pub fn apply(
        &mut self,
        requests: &[NewTransfer],
        now_ms: i64,
    ) -> Vec<Result<TransferOutcome, TransferError>> {
        let mut results = Vec::with_capacity(requests.len());
        let mut start = 0;
        while start < requests.len() {
            let end =
                requests[start..].iter().position(|r| !r.linked).map(|offset| start + offset + 1);
            match end {
                None => {
                    results.extend(
                        requests[start..].iter().map(|_| Err(TransferError::LinkedEventChainOpen)),
                    );
                    break;
                }
                Some(end) if end - start == 1 => {
                    results.push(self.apply_one(&requests[start], now_ms));
                    start = end;
                }
                Some(end) => {
                    results.extend(self.apply_chain(&requests[start..end], now_ms));
                    start = end;
                }
            }
        }
        debug_assert_eq!(results.len(), requests.len());
        results
    }

    fn apply_chain(
        &mut self,
        chain: &[NewTransfer],
        now_ms: i64,
    ) -> Vec<Result<TransferOutcome, TransferError>> {
        let saved = self.clone();
        let mut results = Vec::with_capacity(chain.len());
        for (index, request) in chain.iter().enumerate() {
            match self.apply_one(request, now_ms) {
                Ok(outcome) => results.push(Ok(outcome)),
                Err(error) => {
                    *self = saved;
                    return (0..chain.len())
                        .map(|i| {
                            Err(if i == index { error } else { TransferError::LinkedEventFailed })
                        })
                        .collect();
                }
            }
        }
        results
    }

    fn apply_one(
        &mut self,
        req: &NewTransfer,
        now_ms: i64,
    ) -> Result<TransferOutcome, TransferError> {
        if let Some(existing) = self.transfers.get(&req.id) {
            return if existing.matches(req) {
                Ok(TransferOutcome::Exists(existing.clone()))
            } else {
                Err(TransferError::ExistsWithDifferentFields)
            };
        }
        let plan = match req.kind {
            TransferKind::Posted | TransferKind::Pending { .. } => self.plan_new(req)?,
            TransferKind::PostPending { pending_id } | TransferKind::VoidPending { pending_id } => {
                self.plan_resolution(req, pending_id, now_ms)?
            }
        };
        self.commit(plan, req, now_ms).map(TransferOutcome::Created)
    }

    /// Voids an expired pending transfer with a void transfer of id `void_id`.
    ///
    /// Returns `None` when the transfer is not (or no longer) a pending hold.
    pub fn expire(
        &mut self,
        pending_id: TransferId,
        void_id: TransferId,
        now_ms: i64,
    ) -> Option<Transfer> {
        let pending = self.transfers.get(&pending_id)?;
        if pending.pending_status != Some(PendingStatus::Pending) {
            return None;
        }
        let req = NewTransfer {
            id: void_id,
            debit_account_id: None,
            credit_account_id: None,
            amount: None,
            currency: None,
            code: pending.code,
            kind: TransferKind::VoidPending { pending_id },
            linked: false,
        };
        let plan = Plan {
            debit: pending.debit_account_id,
            credit: pending.credit_account_id,
            amount: pending.amount,
            currency: pending.currency,
            hold_delta: -pending.amount.minor_units(),
            post: 0,
            resolves: Some((pending_id, PendingStatus::Expired)),
        };
        self.commit(plan, &req, now_ms).ok()
    }

    fn plan_new(&self, req: &NewTransfer) -> Result<Plan, TransferError> {
        let (Some(debit_id), Some(credit_id), Some(amount), Some(currency)) =
            (req.debit_account_id, req.credit_account_id, req.amount, req.currency)
        else {
            return Err(TransferError::MissingField);
        };
        if debit_id == credit_id {
            return Err(TransferError::AccountsMustBeDifferent);
        }
        let debit = self.accounts.get(&debit_id).ok_or(TransferError::DebitAccountNotFound)?;
        let credit = self.accounts.get(&credit_id).ok_or(TransferError::CreditAccountNotFound)?;
        if debit.currency != credit.currency {
            return Err(TransferError::AccountsMustHaveSameCurrency);
        }
        if currency != debit.currency {
            return Err(TransferError::CurrencyMismatch);
        }
        if debit.flags.closed {
            return Err(TransferError::DebitAccountClosed);
        }
        if credit.flags.closed {
            return Err(TransferError::CreditAccountClosed);
        }
        let (hold_delta, post) = match req.kind {
            TransferKind::Pending { .. } => (amount.minor_units(), 0),
            _ => (0, amount.minor_units()),
        };
        Ok(Plan {
            debit: debit_id,
            credit: credit_id,
            amount,
            currency: debit.currency,
            hold_delta,
            post,
            resolves: None,
        })
    }

    fn plan_resolution(
        &self,
        req: &NewTransfer,
        pending_id: TransferId,
        now_ms: i64,
    ) -> Result<Plan, TransferError> {
        let pending =
            self.transfers.get(&pending_id).ok_or(TransferError::PendingTransferNotFound)?;
        if !matches!(pending.kind, TransferKind::Pending { .. }) {
            return Err(TransferError::PendingTransferNotPending);
        }
        match pending.pending_status {
            Some(PendingStatus::Posted) => return Err(TransferError::PendingTransferAlreadyPosted),
            Some(PendingStatus::Voided) => return Err(TransferError::PendingTransferAlreadyVoided),
            Some(PendingStatus::Expired) => return Err(TransferError::PendingTransferExpired),
            Some(PendingStatus::Pending) | None => {}
        }
        // A hold past its deadline is expired even if the expiry sweep has not reached it.
        if pending.expires_at_ms.is_some_and(|at| at <= now_ms) {
            return Err(TransferError::PendingTransferExpired);
        }
        let differs = req.debit_account_id.is_some_and(|d| d != pending.debit_account_id)
            || req.credit_account_id.is_some_and(|c| c != pending.credit_account_id)
            || req.currency.is_some_and(|c| c != pending.currency);
        if differs {
            return Err(TransferError::PendingTransferMismatch);
        }
        let (amount, post, status) = match req.kind {
            TransferKind::PostPending { .. } => {
                let amount = req.amount.unwrap_or(pending.amount);
                if amount > pending.amount {
                    return Err(TransferError::ExceedsPendingAmount);
                }
                (amount, amount.minor_units(), PendingStatus::Posted)
            }
            _ => {
                if req.amount.is_some_and(|a| a != pending.amount) {
                    return Err(TransferError::VoidAmountMismatch);
                }
                (pending.amount, 0, PendingStatus::Voided)
            }
        };
        Ok(Plan {
            debit: pending.debit_account_id,
            credit: pending.credit_account_id,
            amount,
            currency: pending.currency,
            hold_delta: -pending.amount.minor_units(),
            post,
            resolves: Some((pending_id, status)),
        })
    }

    /// Checks limits and overflow on the new balances, then records the transfer.
    fn commit(
        &mut self,
        plan: Plan,
        req: &NewTransfer,
        now_ms: i64,
    ) -> Result<Transfer, TransferError> {
        let (debit_after, credit_after) = self.balances_after(&plan)?;
        if let Some(debit) = self.accounts.get_mut(&plan.debit) {
            debit.balances = debit_after;
        }
        if let Some(credit) = self.accounts.get_mut(&plan.credit) {
            credit.balances = credit_after;
        }
        self.changed_accounts.extend([plan.debit, plan.credit]);
        let (expires_at_ms, pending_status) = match req.kind {
            TransferKind::Pending { timeout_s } => (
                (timeout_s > 0).then(|| now_ms.saturating_add(i64::from(timeout_s) * 1000)),
                Some(PendingStatus::Pending),
            ),
            _ => (None, None),
        };
        let transfer = Transfer {
            id: req.id,
            debit_account_id: plan.debit,
            credit_account_id: plan.credit,
            amount: plan.amount,
            currency: plan.currency,
            code: req.code,
            kind: req.kind,
            linked: req.linked,
            requested_amount: req.amount,
            created_at_ms: now_ms,
            expires_at_ms,
            pending_status,
            debit_balances_after: debit_after,
            credit_balances_after: credit_after,
        };
        let event = match plan.resolves {
            None => LedgerEvent::TransferCreated(transfer.clone()),
            Some((pending_id, status)) => {
                if let Some(pending) = self.transfers.get_mut(&pending_id) {
                    pending.pending_status = Some(status);
                }
                self.resolved_pending.push(pending_id);
                match status {
                    PendingStatus::Posted => LedgerEvent::TransferPosted(transfer.clone()),
                    _ => LedgerEvent::TransferVoided {
                        transfer: transfer.clone(),
                        expired: status == PendingStatus::Expired,
                    },
                }
            }
        };
        self.events.push(event);
        self.created.push(transfer.id);
        self.transfers.insert(transfer.id, transfer.clone());
        Ok(transfer)
    }

    fn balances_after(&self, plan: &Plan) -> Result<(Balances, Balances), TransferError> {
        let debit = self.accounts.get(&plan.debit).ok_or(TransferError::DebitAccountNotFound)?;
        let credit = self.accounts.get(&plan.credit).ok_or(TransferError::CreditAccountNotFound)?;
        let add = |balance: i64, delta: i64| {
            balance.checked_add(delta).filter(|b| *b >= 0).ok_or(TransferError::Overflow)
        };
        let mut d = debit.balances;
        d.debits_pending = add(d.debits_pending, plan.hold_delta)?;
        d.debits_posted = add(d.debits_posted, plan.post)?;
        let mut c = credit.balances;
        c.credits_pending = add(c.credits_pending, plan.hold_delta)?;
        c.credits_posted = add(c.credits_posted, plan.post)?;
        let total = |pending: i64, posted: i64| i128::from(pending) + i128::from(posted);
        // Limits are judged only when the transfer adds to the limited side; posting or
        // voiding a hold never does, so a resolution is never refused for funds.
        let grows = plan.hold_delta > 0 || plan.resolves.is_none();
        if grows
            && debit.flags.debits_must_not_exceed_credits
            && total(d.debits_pending, d.debits_posted) > i128::from(d.credits_posted)
        {
            return Err(TransferError::ExceedsCredits);
        }
        if grows
            && credit.flags.credits_must_not_exceed_debits
            && total(c.credits_pending, c.credits_posted) > i128::from(c.debits_posted)
        {
            return Err(TransferError::ExceedsDebits);
        }
        Ok((d, c))
    }
}

/// What a validated request will do to the two accounts.
#[derive(Debug, Clone, Copy)]
struct Plan {
    debit: AccountId,
    credit: AccountId,
    /// The amount recorded on the transfer.
    amount: Amount,
    currency: Currency,
    /// Change to the pending balances: +amount for a new hold, -held for a resolution.
    hold_delta: i64,
    /// Added to the posted balances.
    post: i64,
    resolves: Option<(TransferId, PendingStatus)>,
}

/// Sums of the four balances over every account of one ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerTotals {
    /// Sum of pending debits.
    pub debits_pending: i128,
    /// Sum of posted debits.
    pub debits_posted: i128,
    /// Sum of pending credits.
    pub credits_pending: i128,
    /// Sum of posted credits.
    pub credits_posted: i128,
}

impl LedgerTotals {
    /// Adds one account's balances.
    pub fn add(&mut self, b: &Balances) {
        self.debits_pending += i128::from(b.debits_pending);
        self.debits_posted += i128::from(b.debits_posted);
        self.credits_pending += i128::from(b.credits_pending);
        self.credits_posted += i128::from(b.credits_posted);
    }

    /// Double entry: every debit has its credit, for posted and pending alike.
    pub fn balanced(&self) -> bool {
        self.debits_posted == self.credits_posted && self.debits_pending == self.credits_pending
    }
}

/// Totals per ledger (ISO 4217 numeric code) over the given accounts.
pub fn totals_by_ledger<'a>(
    accounts: impl IntoIterator<Item = &'a Account>,
) -> std::collections::BTreeMap<u16, LedgerTotals> {
    let mut totals = std::collections::BTreeMap::<u16, LedgerTotals>::new();
    for account in accounts {
        totals.entry(account.currency.ledger()).or_default().add(&account.balances);
    }
    totals
}
