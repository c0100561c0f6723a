//! The payments service: a payment is checked for risk, then, in ONE transaction, its
//! hold on the ledger (a pending transfer), its row and the outbox event announcing it are
//! committed. Every later change of status (pick, settle, cancel, review) is committed the
//! same way, with the ledger's post or void of the hold and, for a consumer, the inbox row
//! that de-duplicates the event that caused it.
//!
//! Changes go through a bounded queue to one writer task that applies them in batches, one
//! database transaction per batch (group commit, as the ledger does): external payments all
//! credit the bank's clearing account, and batching is what keeps that one hot row from
//! serializing every payment.

mod ports;
mod writer;

use std::sync::Arc;

use ferrobank_domain::{
    AccountId, Beneficiary, Currency, CustomerRisk, CustomerTier, NewPayment, Payment,
    PaymentError, PaymentId, PaymentStatus, PaymentTrigger, Principal, RiskHistory, RiskRules,
    Role, TransferError, TransferId, evaluate,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub use self::ports::{
    OutboxClaim, OutboxRow, OutboxStore, PaymentPage, PaymentQuery, PaymentStore,
};
use self::writer::{Command, Job, Writer};
use crate::access;
use crate::clock::Clock;
use crate::ports::{LedgerStore, StoreError};
use crate::velocity::VelocityStore;

/// Ledger transfer code of a payment's hold and of its post or void.
pub const PAYMENT_TRANSFER_CODE: u16 = 20;
/// The consumer name of the payment worker (inbox rows, bus queue).
pub const WORKER_CONSUMER: &str = "payment-worker";

/// Bounds of the payments service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentLimits {
    /// Changes waiting for the writer; beyond this, callers get `Busy` (HTTP 503).
    pub queue_capacity: usize,
    /// Most changes committed in one transaction.
    pub max_batch: usize,
    /// Largest page of a list.
    pub max_page: u32,
}

impl Default for PaymentLimits {
    fn default() -> Self {
        Self { queue_capacity: 8192, max_batch: 512, max_page: 200 }
    }
}

/// Why a payment use case did not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PaymentsError {
    /// The queue is full; retry after a moment.
    #[error("the payments service is busy; retry shortly")]
    Busy,
    /// The service is shutting down.
    #[error("the payments service is shutting down")]
    ShuttingDown,
    /// No such payment or account, or the caller may not see it.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller's role may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The payment's state or parts refuse the change.
    #[error(transparent)]
    Payment(#[from] PaymentError),
    /// The ledger refused the hold, its post or its void.
    #[error("the ledger refused the transfer: {0:?}")]
    Ledger(TransferError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result of creating a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new payment.
    New(Payment),
    /// The payment with this id already existed (an idempotent retry).
    Exists(Payment),
}

/// What the payment gateway decided, as the worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Paid: post the hold.
    Succeeded,
    /// Definitively refused: void the hold, record why.
    Failed {
        /// Stable failure code (`declined`, `gateway_refused`, ...).
        code: String,
    },
}

/// A payment as the caller asked for it, with what travels along.
#[derive(Debug, Clone)]
pub struct CreatePayment {
    /// The validated payment.
    pub new: NewPayment,
    /// The client's Idempotency-Key.
    pub idempotency_key: String,
    /// The W3C traceparent of the request.
    pub traceparent: Option<String>,
}

/// Entry point of the payment use cases. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PaymentService {
    ledger: Arc<dyn LedgerStore>,
    payments: Arc<dyn PaymentStore>,
    velocity: Arc<dyn VelocityStore>,
    rules: Arc<RiskRules>,
    clock: Arc<dyn Clock>,
    queue: mpsc::Sender<Job>,
    limits: PaymentLimits,
}

impl PaymentService {
    /// Starts the writer and returns the service and the writer's handle; the writer
    /// stops once every clone of the service is dropped and the queue is drained.
    pub fn start(
        ledger: Arc<dyn LedgerStore>,
        payments: Arc<dyn PaymentStore>,
        velocity: Arc<dyn VelocityStore>,
        rules: Arc<RiskRules>,
        clock: Arc<dyn Clock>,
        limits: PaymentLimits,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, jobs) = mpsc::channel(limits.queue_capacity.max(1));
        let writer = Writer::new(ledger.clone(), clock.clone(), limits.max_batch.max(1));
        let handle = tokio::spawn(writer.run(jobs));
        (Self { ledger, payments, velocity, rules, clock, queue, limits }, handle)
    }

    /// The limits the service runs with.
    pub fn limits(&self) -> PaymentLimits {
        self.limits
    }

    /// The store the service reads from.
    pub fn store(&self) -> &Arc<dyn PaymentStore> {
        &self.payments
    }

    /// The bank's clearing account for `currency`: external payments are credited to it
    /// (the money owed to the payment gateway) when their hold is taken. Opened by
    /// [`crate::LedgerService`] users at start (see the binary's wiring).
    pub fn clearing_account(currency: Currency) -> AccountId {
        AccountId(derived_uuid(&["ferrobank:clearing", currency.code()]))
    }

    /// Creates a payment on behalf of `caller` (`None`: authentication is off): checks the
    /// debtor account is the caller's, runs the risk check, and commits the payment, its
    /// hold and its event. A payment id that exists already returns that payment.
    pub async fn create(
        &self,
        caller: Option<&Principal>,
        request: CreatePayment,
    ) -> Result<Created, PaymentsError> {
        let new = &request.new;
        let account = self
            .ledger
            .account(new.debtor_account())
            .await?
            .filter(|a| caller.is_none_or(|p| access::may_debit(p, a)))
            .ok_or(PaymentsError::NotFound("the debtor account"))?;
        if let Some(existing) = self.payments.payment(new.id()).await? {
            return Ok(Created::Exists(existing));
        }
        // Checked before the velocity counters count it: input that can never be paid.
        if account.currency != new.currency() {
            return Err(PaymentsError::Ledger(TransferError::CurrencyMismatch));
        }
        let now_ms = self.clock.now_ms();
        let owner = account.owner.clone();
        let amount = new.amount().minor_units().unsigned_abs();
        let before = self
            .velocity
            .record(&owner, new.currency().code(), amount, now_ms, self.rules.window_s())
            .await?;
        let beneficiary_seen =
            self.payments.beneficiary_seen(&owner, &new.beneficiary().key()).await?;
        let history = RiskHistory {
            count_in_window: before.count_in_window,
            amount_in_window_minor: before.amount_in_window_minor,
            amount_today_minor: before.amount_today_minor,
            beneficiary_seen,
        };
        let customer = CustomerRisk { tier: tier_of(caller) };
        let decision = evaluate(&self.rules, new, &customer, &history);
        let created_by = caller.map_or_else(|| "anonymous".to_owned(), |p| p.subject.clone());
        let payment =
            Payment::new(new, owner, created_by, decision, request.idempotency_key, now_ms);
        let command = Command::Create {
            credit: credit_account(&payment),
            payment: Box::new(payment),
            traceparent: request.traceparent,
        };
        match self.submit(command).await? {
            (payment, true) => Ok(Created::New(payment)),
            (payment, false) => Ok(Created::Exists(payment)),
        }
    }

    /// One payment, if `caller` may see it: its owner, banking admins and risk analysts.
    pub async fn get(
        &self,
        caller: Option<&Principal>,
        id: PaymentId,
    ) -> Result<Payment, PaymentsError> {
        self.payments
            .payment(id)
            .await?
            .filter(|p| caller.is_none_or(|c| may_read(c, p)))
            .ok_or(PaymentsError::NotFound("the payment"))
    }

    /// A page of the payments of `query.account`, which `caller` must be able to read.
    pub async fn list(
        &self,
        caller: Option<&Principal>,
        mut query: PaymentQuery,
    ) -> Result<PaymentPage, PaymentsError> {
        query.limit = query.limit.clamp(1, self.limits.max_page);
        if let Some(principal) = caller {
            let staff = principal.has_any_role(&[Role::BankingAdmin, Role::RiskAnalyst]);
            match query.account {
                Some(id) => {
                    let visible = self
                        .ledger
                        .account(id)
                        .await?
                        .is_some_and(|a| staff || access::may_read(principal, &a));
                    if !visible {
                        return Err(PaymentsError::NotFound("the account"));
                    }
                }
                None if !staff => {
                    return Err(PaymentsError::Forbidden(
                        "a customer lists the payments of one of their accounts (?account=)",
                    ));
                }
                None => {}
            }
        }
        Ok(self.payments.payments(&query).await?)
    }

    /// Cancels a pending payment of the caller's: voids its hold.
    pub async fn cancel(
        &self,
        caller: Option<&Principal>,
        id: PaymentId,
    ) -> Result<Payment, PaymentsError> {
        let payment = self.get(caller, id).await?;
        if let Some(principal) = caller
            && !(principal.has_role(Role::BankingAdmin) || owns(principal, &payment))
        {
            return Err(PaymentsError::NotFound("the payment"));
        }
        let actor = caller.map_or_else(|| "anonymous".to_owned(), |p| p.subject.clone());
        match self.transition(id, vec![PaymentTrigger::Cancel], actor, None).await {
            // A retried cancel: already done, same answer.
            Err(PaymentsError::Payment(PaymentError::AlreadyFinal {
                status: PaymentStatus::Cancelled,
            })) => self.get(caller, id).await,
            outcome => outcome,
        }
    }

    /// Payments held for review, newest first (risk analysts only).
    pub async fn reviews(
        &self,
        caller: Option<&Principal>,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<PaymentPage, PaymentsError> {
        require_analyst(caller)?;
        let query = PaymentQuery {
            statuses: vec![PaymentStatus::HeldForReview],
            before_seq,
            limit: limit.clamp(1, self.limits.max_page),
            ..PaymentQuery::default()
        };
        Ok(self.payments.payments(&query).await?)
    }

    /// One payment held for review (risk analysts only).
    pub async fn review_item(
        &self,
        caller: Option<&Principal>,
        id: PaymentId,
    ) -> Result<Payment, PaymentsError> {
        require_analyst(caller)?;
        let payment = self.get(caller, id).await?;
        match payment.status {
            PaymentStatus::HeldForReview => Ok(payment),
            _ => Err(PaymentsError::NotFound("the review")),
        }
    }

    /// A risk analyst's decision on a held payment: approval sends it on (its hold stays),
    /// rejection ends it and releases the hold.
    pub async fn review(
        &self,
        caller: Option<&Principal>,
        id: PaymentId,
        approve: bool,
    ) -> Result<Payment, PaymentsError> {
        require_analyst(caller)?;
        let actor = caller.map_or_else(|| "anonymous".to_owned(), |p| p.subject.clone());
        let trigger = if approve { PaymentTrigger::Approved } else { PaymentTrigger::Rejected };
        let payment =
            self.payments.payment(id).await?.ok_or(PaymentsError::NotFound("the payment"))?;
        if payment.status != PaymentStatus::HeldForReview {
            return Err(PaymentError::InvalidTransition { status: payment.status, trigger }.into());
        }
        self.transition(id, vec![trigger], actor, None).await
    }

    /// The worker takes a pending payment (no cancel from now on).
    pub async fn pick(&self, id: PaymentId) -> Result<Payment, PaymentsError> {
        self.transition(id, vec![PaymentTrigger::Picked], WORKER_CONSUMER.to_owned(), None).await
    }

    /// The worker settles a payment it picked (or, for an internal payment, picks and
    /// settles at once): posts or voids the hold and records `event_id` in the inbox, all
    /// in one transaction.
    pub async fn settle(
        &self,
        id: PaymentId,
        settlement: Settlement,
        pick_first: bool,
        event_id: Option<String>,
    ) -> Result<Payment, PaymentsError> {
        let mut triggers = Vec::with_capacity(2);
        if pick_first {
            triggers.push(PaymentTrigger::Picked);
        }
        let failure = match settlement {
            Settlement::Succeeded => {
                triggers.push(PaymentTrigger::Succeeded);
                None
            }
            Settlement::Failed { code } => {
                triggers.push(PaymentTrigger::Failed);
                Some(code)
            }
        };
        let inbox = event_id.map(|id| (WORKER_CONSUMER.to_owned(), id));
        let command = Command::Transition {
            id,
            triggers,
            actor: WORKER_CONSUMER.to_owned(),
            failure_code: failure,
            inbox,
        };
        Ok(self.submit(command).await?.0)
    }

    async fn transition(
        &self,
        id: PaymentId,
        triggers: Vec<PaymentTrigger>,
        actor: String,
        failure_code: Option<String>,
    ) -> Result<Payment, PaymentsError> {
        let command = Command::Transition { id, triggers, actor, failure_code, inbox: None };
        Ok(self.submit(command).await?.0)
    }

    async fn submit(&self, command: Command) -> Result<(Payment, bool), PaymentsError> {
        let (reply, result) = oneshot::channel();
        self.queue.try_send(Job { command, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PaymentsError::Busy,
            mpsc::error::TrySendError::Closed(_) => PaymentsError::ShuttingDown,
        })?;
        result.await.map_err(|_| PaymentsError::ShuttingDown)?
    }
}

/// The id of a payment's hold, and of the post and void that resolve it: derived, so a
/// retried change finds the transfer it made the first time.
pub fn hold_id(payment: PaymentId) -> TransferId {
    TransferId(derived_uuid(&["ferrobank:hold", &payment.to_string()]))
}

/// The account a payment's hold credits: the beneficiary's account inside the bank, the
/// clearing account of its currency for an external beneficiary.
fn credit_account(payment: &Payment) -> AccountId {
    match &payment.beneficiary {
        Beneficiary::Internal { account } => *account,
        Beneficiary::External { .. } => PaymentService::clearing_account(payment.currency),
    }
}

fn resolution_id(payment: PaymentId, kind: &str) -> TransferId {
    TransferId(derived_uuid(&["ferrobank:hold", &payment.to_string(), kind]))
}

/// A UUID from the SHA-256 of `parts` (NUL-separated), with the version bits of a custom
/// (v8) UUID.
pub fn derived_uuid(parts: &[&str]) -> Uuid {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The customer's tier, which selects their limits: the `tier` claim of the caller's
/// validated access token, which the identity provider fills from the user attribute its
/// administrators set after KYC. Nothing else (a body field, a header) may name a tier.
fn tier_of(caller: Option<&Principal>) -> CustomerTier {
    // A missing claim, or a tier this build does not know, gets `standard`: the default
    // rules give it the lowest limits of all tiers on every rule (the domain's
    // `standard_is_the_strictest_tier_of_the_defaults` test holds them to that), so a
    // token that says nothing usable never earns more than the most restrictive limits.
    caller.and_then(|p| p.tier).unwrap_or(CustomerTier::Standard)
}

fn owns(principal: &Principal, payment: &Payment) -> bool {
    principal.has_role(Role::Customer) && principal.subject == payment.owner
}

fn may_read(principal: &Principal, payment: &Payment) -> bool {
    principal.has_any_role(&[Role::BankingAdmin, Role::RiskAnalyst]) || owns(principal, payment)
}

fn require_analyst(caller: Option<&Principal>) -> Result<(), PaymentsError> {
    match caller {
        Some(p) if !p.has_role(Role::RiskAnalyst) => {
            Err(PaymentsError::Forbidden("reviews are for risk analysts"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(tier: Option<CustomerTier>) -> Principal {
        Principal {
            subject: "u-1".into(),
            username: Some("alice".into()),
            roles: [Role::Customer].into_iter().collect(),
            client_id: Some("banking-web-app".into()),
            scopes: Default::default(),
            issuer: "https://idp.example/realms/banking".into(),
            tier,
        }
    }

    #[test]
    fn tier_of_is_the_token_tier_and_standard_without_one() {
        for tier in CustomerTier::ALL {
            assert_eq!(tier_of(Some(&customer(Some(tier)))), tier);
        }
        // No claim, or one the adapter could not map to a known tier.
        assert_eq!(tier_of(Some(&customer(None))), CustomerTier::Standard);
        // Authentication off: nobody vouched for a tier.
        assert_eq!(tier_of(None), CustomerTier::Standard);
    }
}
