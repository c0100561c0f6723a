//! The payment worker: consumes `transaction.created`, charges the payment gateway for
//! external payments, and settles each payment (post or void its hold, status, outbox
//! event, inbox row) in one transaction.
//!
//! Every step is safe to repeat. The inbox de-duplicates the event; the payment's status
//! says how far a crashed worker got: `pending` is picked first (after which a cancel can
//! no longer race the charge), `processing` is charged again with the same idempotency key
//! (the gateway answers the first charge again), a final status is done. A sweep re-drives
//! payments whose status has not moved for `stale_after_ms`, so a message lost with a
//! crashed in-process bus, or dead-lettered while the gateway was down, still finishes.

use std::sync::Arc;
use std::time::Duration;

use ferrobank_domain::{Beneficiary, Payment, PaymentId, PaymentStatus};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::bus::{Delivery, EventBus};
use crate::clock::Clock;
use crate::payments::{PaymentService, PaymentsError, Settlement, WORKER_CONSUMER};
use crate::psp::{ChargeOutcome, ChargeRequest, PaymentGateway, PspError};

/// The event type the worker consumes.
pub const CREATED: &str = "transaction.created";

/// Settings of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerOptions {
    /// Payments processed at once.
    pub concurrency: usize,
    /// A payment pending or processing without change for this long is re-driven.
    pub stale_after_ms: i64,
    /// How often stale payments are looked for.
    pub sweep_interval_ms: u64,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self { concurrency: 512, stale_after_ms: 30_000, sweep_interval_ms: 5_000 }
    }
}

/// Why one payment could not be processed now.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Worth retrying later (gateway down, database busy).
    #[error("retry later: {0}")]
    Transient(String),
    /// Will never work (an event that names no payment).
    #[error("poison: {0}")]
    Poison(String),
}

/// The payment worker.
#[derive(Debug, Clone)]
pub struct PaymentWorker {
    payments: PaymentService,
    gateway: Arc<dyn PaymentGateway>,
    clock: Arc<dyn Clock>,
    options: WorkerOptions,
}

impl PaymentWorker {
    /// A worker settling through `payments` and charging `gateway`.
    pub fn new(
        payments: PaymentService,
        gateway: Arc<dyn PaymentGateway>,
        clock: Arc<dyn Clock>,
        options: WorkerOptions,
    ) -> Self {
        Self { payments, gateway, clock, options }
    }

    /// Consumes `transaction.created` from `bus` until the task is aborted; subscribes
    /// again after the bus drops the subscription.
    pub async fn consume(self, bus: Arc<dyn EventBus>) {
        let permits = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        loop {
            let mut subscription = match bus.subscribe(WORKER_CONSUMER, &[CREATED]).await {
                Ok(subscription) => subscription,
                Err(error) => {
                    tracing::warn!(%error, "payment worker: subscribing failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let delivery = match subscription.next().await {
                    Ok(delivery) => delivery,
                    Err(error) => {
                        tracing::warn!(%error, "payment worker: subscription ended; resubscribing");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                };
                let worker = self.clone();
                tokio::spawn(async move {
                    worker.handle(delivery).await;
                    drop(permit);
                });
            }
        }
    }

    /// Re-drives stale payments every `sweep_interval_ms` until the task is aborted.
    pub async fn sweep(self) {
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.options.sweep_interval_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let before = self.clock.now_ms() - self.options.stale_after_ms;
            let stale = self
                .payments
                .store()
                .stale(&[PaymentStatus::Pending, PaymentStatus::Processing], before, 100)
                .await;
            match stale {
                Ok(payments) => {
                    for payment in payments {
                        metrics::counter!("ferrobank_payment_worker_redriven_total").increment(1);
                        if let Err(error) = self.process(payment.id, None).await {
                            tracing::warn!(payment = %payment.id, %error, "re-driving failed");
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "looking for stale payments failed"),
            }
        }
    }

    /// Processes one delivery and settles it: ack when done (or done before), retry when
    /// the gateway or the database is unavailable, reject poison.
    pub async fn handle(&self, delivery: Delivery) {
        let event = delivery.event();
        let event_id = event.id.clone();
        // Consumer lag: from the change's commit to this delivery.
        if let Some(committed_ms) = event.data.get("updated_at_ms").and_then(|v| v.as_i64()) {
            let lag_ms = (self.clock.now_ms() - committed_ms).max(0).unsigned_abs();
            metrics::histogram!("ferrobank_bus_consumer_lag_seconds", "consumer" => WORKER_CONSUMER)
                .record(Duration::from_millis(lag_ms));
        }
        let payment_id = event
            .data
            .get("payment_id")
            .and_then(|v| v.as_str())
            .and_then(|s| Uuid::parse_str(s).ok())
            .map(PaymentId);
        let outcome = match payment_id {
            Some(id) => self.process(id, Some(event_id.clone())).await,
            None => Err(WorkerError::Poison("the event names no payment_id".into())),
        };
        let settled = match outcome {
            Ok(()) => delivery.ack().await,
            Err(WorkerError::Transient(reason)) => {
                tracing::info!(event = %event_id, %reason, "payment worker: will retry");
                delivery.retry().await
            }
            Err(WorkerError::Poison(reason)) => {
                tracing::warn!(event = %event_id, %reason, "payment worker: poison message");
                delivery.reject().await
            }
        };
        if let Err(error) = settled {
            tracing::warn!(event = %event_id, %error, "settling a delivery failed; it comes back");
        }
    }

    /// Takes a payment as far as it goes: picked, charged, settled.
    pub async fn process(
        &self,
        id: PaymentId,
        event_id: Option<String>,
    ) -> Result<(), WorkerError> {
        // The payment's status says how far it got, so a copy of an event already processed
        // costs this one read; the inbox row written with the settlement is what rules out
        // a second effect of the same event (the writer checks it under the payment's lock).
        let payment = match self.payments.store().payment(id).await.map_err(store)? {
            Some(payment) => payment,
            None => return Err(WorkerError::Poison(format!("payment {id} does not exist"))),
        };
        if payment.status.is_terminal() && event_id.is_some() {
            metrics::counter!("ferrobank_payment_worker_duplicates_total").increment(1);
            return Ok(());
        }
        let payment = match payment.status {
            PaymentStatus::Pending if !payment.is_external() => {
                return self.settle(&payment, Settlement::Succeeded, true, event_id).await;
            }
            PaymentStatus::Pending => match self.payments.pick(id).await {
                Ok(picked) => picked,
                // Cancelled (or settled by another worker) in the meantime: nothing to do.
                Err(PaymentsError::Payment(_)) => return Ok(()),
                Err(error) => return Err(transient(error)),
            },
            PaymentStatus::Processing if !payment.is_external() => {
                return self.settle(&payment, Settlement::Succeeded, false, event_id).await;
            }
            PaymentStatus::Processing => payment,
            // Final, or not yet accepted (held for review): not the worker's.
            _ => return Ok(()),
        };
        if payment.status != PaymentStatus::Processing {
            return Ok(());
        }
        let settlement = match self.gateway.charge(&charge_of(&payment)).await {
            Ok(ChargeOutcome::Charged { .. }) => Settlement::Succeeded,
            Ok(ChargeOutcome::Declined { .. }) => Settlement::Failed { code: "declined".into() },
            Err(PspError::Refused(reason)) => {
                tracing::warn!(payment = %id, %reason, "the payment gateway refused the request");
                Settlement::Failed { code: "gateway_refused".into() }
            }
            Err(error @ (PspError::Unavailable(_) | PspError::CircuitOpen { .. })) => {
                return Err(WorkerError::Transient(error.to_string()));
            }
        };
        self.settle(&payment, settlement, false, event_id).await
    }

    async fn settle(
        &self,
        payment: &Payment,
        settlement: Settlement,
        pick_first: bool,
        event_id: Option<String>,
    ) -> Result<(), WorkerError> {
        match self.payments.settle(payment.id, settlement, pick_first, event_id).await {
            Ok(settled) => {
                if settled.status.is_terminal() {
                    let latency_ms =
                        (settled.updated_at_ms - settled.created_at_ms).max(0).unsigned_abs();
                    metrics::histogram!("ferrobank_payment_created_to_final_seconds", "status" => settled.status.as_str())
                        .record(Duration::from_millis(latency_ms));
                }
                Ok(())
            }
            // Cancelled or finished meanwhile.
            Err(PaymentsError::Payment(_)) => Ok(()),
            Err(error @ PaymentsError::Ledger(_)) => Err(WorkerError::Poison(error.to_string())),
            Err(error) => Err(transient(error)),
        }
    }
}

/// The gateway charge of a payment: keyed by the payment id, which is derived from the
/// customer's Idempotency-Key and unique across customers (two customers may send the same
/// key; the gateway must still see two charges).
fn charge_of(payment: &Payment) -> ChargeRequest {
    let beneficiary_iban = match &payment.beneficiary {
        Beneficiary::External { iban, .. } => Some(iban.electronic().to_owned()),
        Beneficiary::Internal { .. } => None,
    };
    let reference = match payment.reference.as_str() {
        "" => format!("ferrobank payment {}", payment.id),
        reference => reference.to_owned(),
    };
    ChargeRequest {
        idempotency_key: payment.id.to_string(),
        amount_minor: payment.amount.minor_units(),
        currency: payment.currency.code().to_owned(),
        reference,
        beneficiary_iban,
    }
}

fn transient(error: PaymentsError) -> WorkerError {
    WorkerError::Transient(error.to_string())
}

fn store(error: crate::ports::StoreError) -> WorkerError {
    WorkerError::Transient(error.to_string())
}
