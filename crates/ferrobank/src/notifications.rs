//! Wiring of notifications: the `notifications` consumer of the event bus, the webhook
//! deliverer and, with `[notifications] smtp_url`, the email deliverer, over the SQL store.
//! Email addresses come from the built-in provider's users of `[identity] realm` as stored
//! (users of an external Keycloak are unknown here: their emails are `skipped`).
//!
//! The consumer records the events delivered together in one transaction and acks each
//! once it has committed, asks for a retry when the store failed (the bus redelivers after
//! its backoff; de-duplication by event id makes that safe) and rejects an event whose
//! data can never be a payment (poison, to the dead-letter queue).

use std::sync::Arc;
use std::time::Duration;

use ferrobank_adapters::SqlStore;
use ferrobank_adapters::idp::RealmDirectory;
use ferrobank_application::notifications::{CONSUMER, DeliveryStatus, EVENT_TYPES, EventOutcome};
use ferrobank_application::{
    Clock, Delivery, Event, EventBus, NotificationError, NotificationService, Subscription,
};
use ferrobank_interfaces::email::{EmailSender, spawn_email_deliverer};
use ferrobank_interfaces::webhooks::{DelivererOptions, spawn_deliverer};
use tokio::task::JoinHandle;

use crate::config::Config;

/// Wait before subscribing again after the bus ended a subscription.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Subscribes the `notifications` consumer (before returning, so no event published from
/// now on is missed) and starts its loop and the webhook deliverer. The caller checks
/// `[notifications] enabled` and aborts the handles at shutdown.
pub async fn start(
    config: &Config,
    store: &SqlStore,
    bus: Arc<dyn EventBus>,
    clock: Arc<dyn Clock>,
) -> Result<(NotificationService, Vec<JoinHandle<()>>), String> {
    let settings = &config.notifications;
    let mut service = NotificationService::new(Arc::new(store.clone()), clock, settings.policy())
        .map_err(|e| format!("notifications: {e}"))?;
    let options = DelivererOptions {
        poll_interval_ms: settings.poll_interval_ms,
        max_batch: settings.max_batch,
    };
    let mut tasks = Vec::new();
    if let (Some(url), Some(from)) = (&settings.smtp_url, &settings.email_from) {
        let sender = EmailSender::new(url, from, settings.timeout_ms)
            .map_err(|e| format!("notifications: {e}"))?;
        let directory = RealmDirectory::new(store.clone(), config.identity.realm.clone());
        service = service.with_email(Arc::new(directory));
        tasks.push(spawn_email_deliverer(service.clone(), sender, options));
    }
    let subscription = bus
        .subscribe(CONSUMER, &EVENT_TYPES)
        .await
        .map_err(|e| format!("notifications: subscribing to the bus: {e}"))?;
    let consumer = tokio::spawn(consume(service.clone(), bus, subscription));
    let deliverer =
        spawn_deliverer(service.clone(), options).map_err(|e| format!("notifications: {e}"))?;
    tasks.extend([consumer, deliverer]);
    Ok((service, tasks))
}

/// Most events recorded in one transaction by the consumer.
const MAX_BATCH: usize = 256;

/// The consumer loop: waits for an event, takes every other one already delivered (up to
/// [`MAX_BATCH`] and the prefetch), records them in one transaction and settles each after
/// the commit. One commit per batch instead of one per event is what lets it keep up with
/// thousands of payments a second.
async fn consume(
    service: NotificationService,
    bus: Arc<dyn EventBus>,
    mut subscription: Box<dyn Subscription>,
) {
    loop {
        let (batch, ended) = match subscription.next_batch(MAX_BATCH).await {
            Ok(taken) => taken,
            Err(error) => (Vec::new(), Some(error)),
        };
        settle_batch(&service, batch).await;
        if let Some(error) = ended {
            tracing::warn!(%error, "notifications: the bus subscription ended; subscribing again");
            subscription = loop {
                tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                match bus.subscribe(CONSUMER, &EVENT_TYPES).await {
                    Ok(subscription) => break subscription,
                    Err(error) => tracing::warn!(%error, "notifications: subscribing failed"),
                }
            };
        }
    }
}

/// Records a batch of events and settles each delivery: ack once committed, reject poison,
/// retry after a store failure. When the store refused the batch, each event is recorded
/// alone, so that one it refuses does not hold back (or dead-letter) the others.
pub async fn settle_batch(service: &NotificationService, batch: Vec<Delivery>) {
    if batch.is_empty() {
        return;
    }
    let events: Vec<&Event> = batch.iter().map(Delivery::event).collect();
    let outcomes = match service.on_events(&events).await {
        Ok(outcomes) => outcomes,
        Err(error) if batch.len() > 1 => {
            tracing::warn!(%error, events = batch.len(), "notifications: batch failed; one by one");
            let mut outcomes = Vec::with_capacity(batch.len());
            for event in &events {
                outcomes.push(service.on_event(event).await);
            }
            outcomes
        }
        Err(error) => vec![Err(error)],
    };
    for (delivery, outcome) in batch.into_iter().zip(outcomes) {
        let event_id = delivery.event().id.clone();
        let settled = match outcome {
            Ok(outcome) => {
                if let EventOutcome::Recorded(recorded) = outcome
                    && let Some(status) = recorded.email_created
                {
                    let outcome =
                        if status == DeliveryStatus::Skipped { "skipped" } else { "queued" };
                    metrics::counter!("ferrobank_emails_total", "outcome" => outcome).increment(1);
                }
                delivery.ack().await
            }
            Err(NotificationError::InvalidEvent(reason)) => {
                tracing::warn!(event = %event_id, %reason, "notifications: poison event rejected");
                delivery.reject().await
            }
            Err(error) => {
                tracing::warn!(event = %event_id, %error, "notifications: event retried later");
                delivery.retry().await
            }
        };
        if let Err(error) = settled {
            // Unsettled, the event comes back (redelivered): de-duplication absorbs it.
            tracing::warn!(event = %event_id, %error, "notifications: settling an event failed");
        }
    }
}
