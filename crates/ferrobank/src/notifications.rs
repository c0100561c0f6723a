//! Wiring of notifications: the `notifications` consumer of the event bus and the webhook
//! deliverer, over the SQL store.
//!
//! The consumer acks an event once `on_event` has committed, asks for a retry when the
//! store failed (the bus redelivers after its backoff; de-duplication by event id makes
//! that safe) and rejects an event whose data can never be a payment (poison, to the
//! dead-letter queue). Email is not sent: no SMTP client is among ferrobank's dependencies.

use std::sync::Arc;
use std::time::Duration;

use ferrobank_adapters::SqlStore;
use ferrobank_application::notifications::{CONSUMER, EVENT_TYPES};
use ferrobank_application::{
    Clock, EventBus, NotificationError, NotificationService, Subscription,
};
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
    let service = NotificationService::new(Arc::new(store.clone()), clock, settings.policy())
        .map_err(|e| format!("notifications: {e}"))?;
    let subscription = bus
        .subscribe(CONSUMER, &EVENT_TYPES)
        .await
        .map_err(|e| format!("notifications: subscribing to the bus: {e}"))?;
    let consumer = tokio::spawn(consume(service.clone(), bus, subscription));
    let deliverer = spawn_deliverer(
        service.clone(),
        DelivererOptions {
            poll_interval_ms: settings.poll_interval_ms,
            max_batch: settings.max_batch,
        },
    )
    .map_err(|e| format!("notifications: {e}"))?;
    Ok((service, vec![consumer, deliverer]))
}

/// The consumer loop: one event at a time, settled after its effect committed.
async fn consume(
    service: NotificationService,
    bus: Arc<dyn EventBus>,
    mut subscription: Box<dyn Subscription>,
) {
    loop {
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
        let event_id = delivery.event().id.clone();
        let settled = match service.on_event(delivery.event()).await {
            Ok(_) => delivery.ack().await,
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
