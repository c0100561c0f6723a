//! Wiring of notifications: the `notifications` consumer of the event bus, the webhook
//! deliverer and, with `[notifications] smtp_url`, the email deliverer, over the SQL store.
//! Email addresses come from the built-in provider's users of `[identity] realm` as stored
//! (users of an external Keycloak are unknown here: their emails are `skipped`).
//!
//! The consumer acks an event once `on_event` has committed, asks for a retry when the
//! store failed (the bus redelivers after its backoff; de-duplication by event id makes
//! that safe) and rejects an event whose data can never be a payment (poison, to the
//! dead-letter queue).

use std::sync::Arc;
use std::time::Duration;

use ferrobank_adapters::SqlStore;
use ferrobank_adapters::idp::RealmDirectory;
use ferrobank_application::notifications::{CONSUMER, DeliveryStatus, EVENT_TYPES, EventOutcome};
use ferrobank_application::{
    Clock, Delivery, EventBus, NotificationError, NotificationService, Subscription,
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

/// Events handled at once by the consumer. Events are independent of each other (unique
/// keys per event make each one idempotent), so they need no order; side by side, their
/// commits share PostgreSQL's WAL flushes instead of waiting for one fsync each, which is
/// what lets the consumer keep up with thousands of payments a second.
const CONCURRENT_EVENTS: usize = 64;

/// The consumer loop: up to [`CONCURRENT_EVENTS`] events at a time, each settled after
/// its effect committed.
async fn consume(
    service: NotificationService,
    bus: Arc<dyn EventBus>,
    mut subscription: Box<dyn Subscription>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_EVENTS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let delivery = match subscription.next().await {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::warn!(%error, "notifications: the bus subscription ended; subscribing again");
                subscription = loop {
                    tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                    match bus.subscribe(CONSUMER, &EVENT_TYPES).await {
                        Ok(subscription) => break subscription,
                        Err(error) => tracing::warn!(%error, "notifications: subscribing failed"),
                    }
                };
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            settle(&service, delivery).await;
            drop(permit);
        });
    }
}

/// Records one event and settles its delivery: ack once committed, retry after a store
/// failure, reject poison.
async fn settle(service: &NotificationService, delivery: Delivery) {
    let event_id = delivery.event().id.clone();
    let settled = match service.on_event(delivery.event()).await {
        Ok(outcome) => {
            if let EventOutcome::Recorded(recorded) = outcome
                && let Some(status) = recorded.email_created
            {
                let outcome = if status == DeliveryStatus::Skipped { "skipped" } else { "queued" };
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
