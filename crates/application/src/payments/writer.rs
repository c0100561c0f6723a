//! The payments writer: applies queued changes in batches, one transaction per batch.
//!
//! A batch locks its payments (id order), then the accounts of their holds (id order),
//! reads the holds, applies every change in queue order on the in-memory [`Book`] and
//! payment copies, and writes what changed with the outbox events and inbox rows. A change
//! the state machine or the ledger refuses writes nothing and fails alone.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use ferrobank_domain::{
    AccountId, Book, NewTransfer, Payment, PaymentId, PaymentStatus, PaymentTrigger, TransferId,
    TransferKind,
};
use tokio::sync::{mpsc, oneshot};

use super::{PAYMENT_TRANSFER_CODE, PaymentsError, credit_account, hold_id, resolution_id};
use crate::clock::Clock;
use crate::outbox::OutboxMessage;
use crate::ports::{LedgerStore, StoreError};

/// Attempts at a batch that lost a race with a concurrent writer.
const MAX_BATCH_ATTEMPTS: usize = 3;

/// One change of a payment.
#[derive(Debug, Clone)]
pub(super) enum Command {
    /// A new payment, already decided by the risk check: held (allow, review) or rejected.
    Create {
        /// The payment in `PendingRisk` with its decision.
        payment: Box<Payment>,
        /// The account its hold credits.
        credit: AccountId,
        /// Of the request.
        traceparent: Option<String>,
    },
    /// Triggers applied in order to an existing payment, with the hold's post or void
    /// when the last one ends it.
    Transition {
        /// The payment.
        id: PaymentId,
        /// What happened, in order.
        triggers: Vec<PaymentTrigger>,
        /// Who caused it.
        actor: String,
        /// For `Failed`.
        failure_code: Option<String>,
        /// The consumer and event to record in the inbox.
        inbox: Option<(String, String)>,
    },
}

impl Command {
    fn payment_id(&self) -> PaymentId {
        match self {
            Self::Create { payment, .. } => payment.id,
            Self::Transition { id, .. } => *id,
        }
    }
}

type Reply = Result<(Payment, bool), PaymentsError>;

/// A queued change and where its result goes.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) command: Command,
    pub(super) reply: oneshot::Sender<Reply>,
}

pub(super) struct Writer {
    store: Arc<dyn LedgerStore>,
    clock: Arc<dyn Clock>,
    max_batch: usize,
}

/// What a batch will write.
#[derive(Default)]
struct Changes {
    inserted: Vec<PaymentId>,
    updated: BTreeSet<PaymentId>,
    outbox: Vec<OutboxMessage>,
    inbox: Vec<(String, String)>,
}

impl Writer {
    pub(super) fn new(
        store: Arc<dyn LedgerStore>,
        clock: Arc<dyn Clock>,
        max_batch: usize,
    ) -> Self {
        Self { store, clock, max_batch }
    }

    pub(super) async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.recv().await {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            metrics::histogram!("ferrobank_payments_batch_size").record(batch.len() as f64);
            let commands: Vec<&Command> = batch.iter().map(|j| &j.command).collect();
            let mut results = self.commit(&commands).await;
            for _ in 1..MAX_BATCH_ATTEMPTS {
                if !matches!(results, Err(StoreError::Conflict(_))) {
                    break;
                }
                metrics::counter!("ferrobank_payments_batch_retries_total").increment(1);
                results = self.commit(&commands).await;
            }
            match results {
                Ok(results) => {
                    for (job, result) in batch.into_iter().zip(results) {
                        let _ = job.reply.send(result);
                    }
                }
                Err(error) => {
                    tracing::error!(%error, changes = batch.len(), "payments batch failed");
                    for job in batch {
                        let _ = job.reply.send(Err(PaymentsError::Store(error.clone())));
                    }
                }
            }
        }
        tracing::info!("payments writer stopped: queue closed and drained");
    }

    async fn commit(&self, commands: &[&Command]) -> Result<Vec<Reply>, StoreError> {
        let now_ms = self.clock.now_ms();
        let mut tx = self.store.begin().await?;
        let ids: BTreeSet<PaymentId> = commands.iter().map(|c| c.payment_id()).collect();
        let ids: Vec<PaymentId> = ids.into_iter().collect();
        let mut payments: HashMap<PaymentId, Payment> =
            tx.lock_payments(&ids).await?.into_iter().map(|p| (p.id, p)).collect();

        // Every hold, post and void the batch may touch, and their accounts: a payment's
        // hold debits its debtor account and credits the account its beneficiary names
        // (`credit_account`), so both are known before anything is read.
        let mut transfer_ids = BTreeSet::new();
        let mut account_ids = BTreeSet::new();
        for command in commands {
            let id = command.payment_id();
            transfer_ids.extend([
                hold_id(id),
                resolution_id(id, "post"),
                resolution_id(id, "void"),
            ]);
            match command {
                Command::Create { payment, credit, .. } => {
                    account_ids.extend([payment.debtor_account, *credit]);
                }
                Command::Transition { .. } => {
                    if let Some(p) = payments.get(&id) {
                        account_ids.extend([p.debtor_account, credit_account(p)]);
                    }
                }
            }
        }
        let transfer_ids: Vec<TransferId> = transfer_ids.into_iter().collect();
        let mut accounts =
            tx.lock_accounts(&account_ids.iter().copied().collect::<Vec<_>>()).await?;
        let transfers = tx.transfers(&transfer_ids).await?;
        // A hold on other accounts than its payment names (never written so): lock them
        // too rather than fail the batch.
        let unlocked: BTreeSet<AccountId> = transfers
            .iter()
            .flat_map(|t| [t.debit_account_id, t.credit_account_id])
            .filter(|a| !account_ids.contains(a))
            .collect();
        if !unlocked.is_empty() {
            accounts.extend(tx.lock_accounts(&unlocked.into_iter().collect::<Vec<_>>()).await?);
        }
        let mut book = Book::new(accounts, transfers);

        let mut inbox_keys: HashMap<String, Vec<String>> = HashMap::new();
        for command in commands {
            if let Command::Transition { inbox: Some((consumer, event)), .. } = command {
                inbox_keys.entry(consumer.clone()).or_default().push(event.clone());
            }
        }
        let mut seen: HashSet<(String, String)> = HashSet::new();
        for (consumer, events) in inbox_keys {
            for event in tx.inbox_seen(&consumer, &events).await? {
                seen.insert((consumer.clone(), event));
            }
        }

        let mut changes = Changes::default();
        let mut replies = Vec::with_capacity(commands.len());
        for command in commands {
            let reply = match command {
                Command::Create { payment, credit, traceparent } => create(
                    &mut book,
                    &mut payments,
                    &mut changes,
                    payment,
                    *credit,
                    traceparent,
                    now_ms,
                ),
                Command::Transition { id, triggers, actor, failure_code, inbox } => {
                    if let Some(key) = inbox
                        && !seen.insert(key.clone())
                    {
                        // Processed before: the same effect must not happen twice.
                        payments
                            .get(id)
                            .cloned()
                            .map(|p| (p, false))
                            .ok_or(PaymentsError::NotFound("the payment"))
                    } else {
                        let reply = transition(
                            &mut book,
                            &mut payments,
                            &mut changes,
                            *id,
                            triggers,
                            actor,
                            failure_code.as_deref(),
                            now_ms,
                        );
                        if let (Some(key), Ok(_)) = (inbox, &reply) {
                            changes.inbox.push(key.clone());
                        }
                        reply
                    }
                }
            };
            replies.push(reply);
        }

        let mut messages: Vec<OutboxMessage> =
            book.events().iter().map(OutboxMessage::from_event).collect();
        messages.append(&mut changes.outbox);
        if messages.is_empty() && changes.inbox.is_empty() {
            return Ok(replies);
        }
        if !book.events().is_empty() {
            tx.save_book(&book).await?;
        }
        let inserted: Vec<&Payment> =
            changes.inserted.iter().filter_map(|id| payments.get(id)).collect();
        tx.insert_payments(&inserted).await?;
        let updated: Vec<&Payment> = changes
            .updated
            .iter()
            .filter(|id| !changes.inserted.contains(id))
            .filter_map(|id| payments.get(id))
            .collect();
        tx.update_payments(&updated).await?;
        let mut by_consumer: HashMap<&str, Vec<String>> = HashMap::new();
        for (consumer, event) in &changes.inbox {
            by_consumer.entry(consumer).or_default().push(event.clone());
        }
        for (consumer, events) in by_consumer {
            tx.record_inbox(consumer, &events, now_ms).await?;
        }
        tx.append_outbox(&messages).await?;
        tx.commit().await?;
        for message in &messages {
            metrics::counter!("ferrobank_payments_events_total", "type" => message.kind)
                .increment(1);
        }
        Ok(replies)
    }
}

fn create(
    book: &mut Book,
    payments: &mut HashMap<PaymentId, Payment>,
    changes: &mut Changes,
    requested: &Payment,
    credit: AccountId,
    traceparent: &Option<String>,
    now_ms: i64,
) -> Reply {
    if let Some(existing) = payments.get(&requested.id) {
        return Ok((existing.clone(), false));
    }
    let mut payment = requested.clone();
    let event = payment.apply(payment.risk.trigger(), now_ms)?;
    if payment.status != PaymentStatus::Rejected {
        let hold = NewTransfer {
            id: hold_id(payment.id),
            debit_account_id: Some(payment.debtor_account),
            credit_account_id: Some(credit),
            amount: Some(payment.amount),
            currency: Some(payment.currency),
            code: PAYMENT_TRANSFER_CODE,
            kind: TransferKind::Pending { timeout_s: 0 },
            linked: false,
        };
        book.apply(std::slice::from_ref(&hold), now_ms)
            .pop()
            .unwrap_or(Err(ferrobank_domain::TransferError::LinkedEventFailed))
            .map_err(PaymentsError::Ledger)?;
        payment.hold_id = Some(hold.id);
    } else {
        payment.failure_code = Some("risk_denied".to_owned());
    }
    let actor = payment.created_by.clone();
    changes.outbox.push(OutboxMessage::payment(&payment, event, &actor, traceparent.clone()));
    changes.inserted.push(payment.id);
    payments.insert(payment.id, payment.clone());
    Ok((payment, true))
}

#[allow(clippy::too_many_arguments)] // one call site, each argument a distinct part
fn transition(
    book: &mut Book,
    payments: &mut HashMap<PaymentId, Payment>,
    changes: &mut Changes,
    id: PaymentId,
    triggers: &[PaymentTrigger],
    actor: &str,
    failure_code: Option<&str>,
    now_ms: i64,
) -> Reply {
    let current = payments.get(&id).ok_or(PaymentsError::NotFound("the payment"))?;
    let mut payment = current.clone();
    let mut events = Vec::with_capacity(triggers.len());
    for trigger in triggers {
        events.push(payment.apply(*trigger, now_ms)?);
    }
    // A reviewer's decision and the end of a payment resolve its hold.
    if matches!(triggers.first(), Some(PaymentTrigger::Approved | PaymentTrigger::Rejected)) {
        payment.reviewer = Some(actor.to_owned());
    }
    let resolution = match payment.status {
        PaymentStatus::Completed => Some(("post", true)),
        PaymentStatus::Failed | PaymentStatus::Cancelled | PaymentStatus::Rejected => {
            Some(("void", false))
        }
        _ => None,
    };
    if let (Some((kind, post)), Some(hold)) = (resolution, payment.hold_id) {
        let request = NewTransfer {
            id: resolution_id(id, kind),
            debit_account_id: None,
            credit_account_id: None,
            amount: None,
            currency: None,
            code: PAYMENT_TRANSFER_CODE,
            kind: if post {
                TransferKind::PostPending { pending_id: hold }
            } else {
                TransferKind::VoidPending { pending_id: hold }
            },
            linked: false,
        };
        book.apply(std::slice::from_ref(&request), now_ms)
            .pop()
            .unwrap_or(Err(ferrobank_domain::TransferError::LinkedEventFailed))
            .map_err(PaymentsError::Ledger)?;
    }
    // Only an analyst rejects an existing payment (the risk check's denial is `create`'s).
    let default_code = match payment.status {
        PaymentStatus::Rejected => Some("review_rejected"),
        PaymentStatus::Failed => Some("failed"),
        _ => None,
    };
    if let Some(default_code) = default_code {
        payment.failure_code = Some(failure_code.unwrap_or(default_code).to_owned());
    }
    for event in events {
        changes.outbox.push(OutboxMessage::payment(&payment, event, actor, None));
    }
    changes.updated.insert(id);
    payments.insert(id, payment.clone());
    Ok((payment, true))
}
