//! The audit consumer: every event the platform announces becomes one audit record (and,
//! for payment events, one enriched activity entry), exactly once per event id.
//!
//! The bus delivers at least once; the record's `id` is the event's id and
//! [`AuditLog::append`] of an id already in the chain returns the record stored first, so a
//! redelivered event adds nothing (the same holds for [`ActivityLog::append`]). The record
//! is built from the event alone (its time, its data), so a redelivery builds the same one.
//! A delivery is acknowledged after both appends; a store error retries it (the bus's
//! backoff, then its dead-letter queue); an event that cannot be read is rejected.

use std::sync::Arc;
use std::time::Duration;

use ferrobank_domain::Currency;
use ferrobank_domain::audit::{AuditAction, AuditActor, AuditOutcome, NewAuditEntry};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::activity::{ActivityEntry, ActivityLog, format_minor_units};
use crate::audit::AuditLog;
use crate::bus::{BusError, Delivery, Event, EventBus, Subscription, validate_subscription};
use crate::ports::StoreError;

/// The consumer name on the bus (its queue).
pub const AUDIT_CONSUMER: &str = "audit";

/// The service an event is attributed to when it names no actor.
pub const DEFAULT_SERVICE_ACTOR: &str = "ferrobank";

/// Every event type the platform emits; the audit consumer binds to all of them.
pub const AUDITED_EVENT_TYPES: [&str; 11] = [
    "account.opened",
    "transfer.created",
    "transfer.posted",
    "transfer.voided",
    "transaction.created",
    "transaction.processing",
    "transaction.completed",
    "transaction.failed",
    "transaction.cancelled",
    "payment.held_for_review",
    "payment.rejected",
];

/// Most deliveries recorded in one batch (one append to the chain).
pub const MAX_AUDIT_BATCH: usize = 512;

/// Longest wait before subscribing again after the bus went away, in milliseconds.
const MAX_RESUBSCRIBE_BACKOFF_MS: u64 = 30_000;

/// Why an event could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The event cannot be turned into a record; delivering it again cannot help.
    #[error("unreadable event: {0}")]
    Invalid(String),
    /// The store failed; try again later.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Records events in the audit chain and the activity log.
#[derive(Debug, Clone)]
pub struct AuditConsumer {
    log: Arc<dyn AuditLog>,
    activity: Option<Arc<dyn ActivityLog>>,
}

impl AuditConsumer {
    /// A consumer appending to `log` and, for payment events, to `activity`.
    pub fn new(log: Arc<dyn AuditLog>, activity: Option<Arc<dyn ActivityLog>>) -> Self {
        Self { log, activity }
    }

    /// Records one event (idempotent on its id).
    pub async fn handle(&self, event: &Event) -> Result<(), ConsumeError> {
        let (entry, activity) = self.entries_of(event)?;
        Ok(self.record(vec![entry], activity.into_iter().collect()).await?)
    }

    /// The audit record of `event` and, when an activity log is kept, its activity entry.
    fn entries_of(
        &self,
        event: &Event,
    ) -> Result<(NewAuditEntry, Option<ActivityEntry>), ConsumeError> {
        let entry = audit_entry(event)?;
        match &self.activity {
            Some(_) => Ok((entry, activity_entry(event)?)),
            None => Ok((entry, None)),
        }
    }

    /// Appends the records of a batch in one append, then their activity entries in one.
    async fn record(
        &self,
        entries: Vec<NewAuditEntry>,
        activities: Vec<ActivityEntry>,
    ) -> Result<(), StoreError> {
        if !entries.is_empty() {
            self.log.append_all(entries).await?;
        }
        if let (Some(log), false) = (&self.activity, activities.is_empty()) {
            log.append_all(&activities).await?;
        }
        Ok(())
    }

    /// Settles one delivery: ack after the appends, retry on a store error, reject an
    /// unreadable event.
    pub async fn settle(&self, delivery: Delivery) -> Result<(), BusError> {
        self.settle_all(vec![delivery]).await
    }

    /// Settles a batch of deliveries: the readable ones are recorded together (one append
    /// to the chain, one to the activity log) and acked after both; when the store refused
    /// the batch, each is recorded alone and acked or retried on its own outcome; an
    /// unreadable event is rejected.
    pub async fn settle_all(&self, deliveries: Vec<Delivery>) -> Result<(), BusError> {
        let mut readable = Vec::with_capacity(deliveries.len());
        let mut entries = Vec::with_capacity(deliveries.len());
        let mut activities = Vec::new();
        let mut first_error = None;
        for delivery in deliveries {
            match self.entries_of(delivery.event()) {
                Ok((entry, activity)) => {
                    entries.push(entry);
                    activities.extend(activity);
                    readable.push(delivery);
                }
                Err(error) => {
                    if let Err(error) = finish(delivery, Err(error)).await {
                        first_error.get_or_insert(error);
                    }
                }
            }
        }
        metrics::histogram!("ferrobank_audit_batch_size").record(readable.len() as f64);
        let recorded = self.record(entries, activities).await;
        let alone = recorded.is_err() && readable.len() > 1;
        for delivery in readable {
            // After a failed batch, each event is recorded alone, so that one the store
            // refuses does not hold back (or dead-letter) the others.
            let outcome = match alone {
                true => self.handle(delivery.event()).await,
                false => recorded.clone().map_err(ConsumeError::Store),
            };
            if let Err(error) = finish(delivery, outcome).await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Subscribes as [`AUDIT_CONSUMER`] to [`AUDITED_EVENT_TYPES`] and records deliveries
    /// until the task is aborted: it waits for one, takes every other one already there
    /// (up to [`MAX_AUDIT_BATCH`] and the subscription's prefetch) and records them as one
    /// batch. When the bus goes away it subscribes again with a growing backoff.
    pub async fn run(self, bus: Arc<dyn EventBus>) {
        self.run_from(bus, None).await;
    }

    /// [`AuditConsumer::run`], starting with `subscription` when given (one the caller made
    /// to learn the bus accepts it: subscribing again would cost a consumer-group join).
    pub async fn run_from(
        self,
        bus: Arc<dyn EventBus>,
        mut subscription: Option<Box<dyn Subscription>>,
    ) {
        let mut backoff_ms = 100_u64;
        loop {
            let subscribed = match subscription.take() {
                Some(subscription) => Ok(subscription),
                None => bus.subscribe(AUDIT_CONSUMER, &AUDITED_EVENT_TYPES).await,
            };
            match subscribed {
                Ok(mut subscription) => {
                    backoff_ms = 100;
                    loop {
                        let (batch, ended) = match subscription.next_batch(MAX_AUDIT_BATCH).await {
                            Ok(taken) => taken,
                            Err(error) => {
                                tracing::warn!(%error, "audit: subscription ended");
                                break;
                            }
                        };
                        if let Err(error) = self.settle_all(batch).await {
                            tracing::warn!(%error, "audit: settling a delivery failed");
                        }
                        if let Some(error) = ended {
                            tracing::warn!(%error, "audit: subscription ended");
                            break;
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "audit: cannot subscribe"),
            }
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            backoff_ms = (backoff_ms * 2).min(MAX_RESUBSCRIBE_BACKOFF_MS);
        }
    }
}

/// Acks a recorded delivery, rejects an unreadable one, retries one the store failed.
async fn finish(delivery: Delivery, outcome: Result<(), ConsumeError>) -> Result<(), BusError> {
    match outcome {
        Ok(()) => delivery.ack().await,
        Err(ConsumeError::Invalid(reason)) => {
            tracing::error!(event_id = %delivery.event().id, %reason, "audit: event rejected");
            metrics::counter!("ferrobank_audit_events_rejected_total").increment(1);
            delivery.reject().await
        }
        Err(ConsumeError::Store(error)) => {
            tracing::warn!(
                event_id = %delivery.event().id, attempt = delivery.attempt(), %error,
                "audit: store failed; the event will be delivered again"
            );
            delivery.retry().await
        }
    }
}

/// The subscription is within the bus's limits (checked by a test, so a new event type
/// cannot silently push it over).
pub fn validate_audit_subscription() -> Result<(), BusError> {
    validate_subscription(AUDIT_CONSUMER, &AUDITED_EVENT_TYPES)
}

/// The audit record of `event`: action = its type, resource = what it is about, actor =
/// `data.actor` or the service [`DEFAULT_SERVICE_ACTOR`], id = the event id, time = the
/// event time, details = amount, currency, status, event id and trace context.
pub fn audit_entry(event: &Event) -> Result<NewAuditEntry, ConsumeError> {
    let id = Uuid::parse_str(&event.id)
        .map_err(|_| ConsumeError::Invalid(format!("event id {:?} is not a UUID", event.id)))?;
    let at_ms = unix_ms_from_rfc3339(&event.time)
        .ok_or_else(|| ConsumeError::Invalid(format!("event time {:?}", event.time)))?;
    let action =
        AuditAction::parse(&event.type_).map_err(|e| ConsumeError::Invalid(e.to_string()))?;
    let invalid = |e: ferrobank_domain::audit::AuditError| ConsumeError::Invalid(e.to_string());
    let actor = match event.data.get("actor") {
        None | Some(Value::Null) => AuditActor::service(DEFAULT_SERVICE_ACTOR).map_err(invalid)?,
        Some(Value::String(service)) => AuditActor::service(service.as_str()).map_err(invalid)?,
        Some(actor) => {
            let id = actor.get("id").and_then(Value::as_str).unwrap_or_default();
            match actor.get("kind").and_then(Value::as_str) {
                Some("subject") => AuditActor::subject(id).map_err(invalid)?,
                Some("service") => AuditActor::service(id).map_err(invalid)?,
                _ => {
                    return Err(ConsumeError::Invalid(format!(
                        "data.actor {actor} is not an actor"
                    )));
                }
            }
        }
    };
    let resource = resource(event)?;
    let mut details = Map::new();
    details.insert("event_id".into(), Value::String(event.id.clone()));
    for key in ["amount", "currency", "status", "failure_code", "reason"] {
        if let Some(value) = event.data.get(key).filter(|v| !v.is_null()) {
            details.insert(key.into(), value.clone());
        }
    }
    if event.type_.starts_with("transfer.") {
        for key in ["pending", "expired"] {
            if let Some(value) = event.data.get(key).filter(|v| v.as_bool() == Some(true)) {
                details.insert(key.into(), value.clone());
            }
        }
    }
    if let Some(traceparent) = &event.traceparent {
        details.insert("traceparent".into(), Value::String(traceparent.clone()));
    }
    NewAuditEntry::new(
        id,
        at_ms,
        actor,
        action,
        resource,
        AuditOutcome::Success,
        Value::Object(details),
    )
    .map_err(invalid)
}

/// `payment:<payment_id>`, `transfer:<transfer_id>` or `account:<account_id>`.
fn resource(event: &Event) -> Result<String, ConsumeError> {
    let (kind, field) = match event.type_.split('.').next() {
        Some("payment" | "transaction") => ("payment", "payment_id"),
        Some("transfer") => ("transfer", "transfer_id"),
        Some("account") => ("account", "account_id"),
        _ => return Err(ConsumeError::Invalid(format!("unknown event type {}", event.type_))),
    };
    match event.data.get(field) {
        Some(Value::String(id)) if !id.is_empty() => Ok(format!("{kind}:{id}")),
        _ => Err(ConsumeError::Invalid(format!("{} without data.{field}", event.type_))),
    }
}

/// The enriched activity entry of a payment event (`payment.*`, `transaction.*`); `None`
/// for other events.
pub fn activity_entry(event: &Event) -> Result<Option<ActivityEntry>, ConsumeError> {
    if !(event.type_.starts_with("payment.") || event.type_.starts_with("transaction.")) {
        return Ok(None);
    }
    let id = Uuid::parse_str(&event.id)
        .map_err(|_| ConsumeError::Invalid(format!("event id {:?} is not a UUID", event.id)))?;
    let at_ms = unix_ms_from_rfc3339(&event.time)
        .ok_or_else(|| ConsumeError::Invalid(format!("event time {:?}", event.time)))?;
    let data = &event.data;
    let text = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_owned);
    let payment_id = text("payment_id")
        .ok_or_else(|| ConsumeError::Invalid(format!("{} without data.payment_id", event.type_)))?;
    let currency = text("currency").and_then(|code| Currency::parse(&code).ok());
    let amount_minor = data.get("amount").and_then(Value::as_i64);
    let amount = match (amount_minor, currency) {
        (Some(minor), Some(currency)) => {
            Some(format!("{} {}", format_minor_units(minor, currency.exponent()), currency.code()))
        }
        _ => None,
    };
    let status = text("status").unwrap_or_else(|| status_of(&event.type_).to_owned());
    let beneficiary = data.get("beneficiary").map(beneficiary_for_humans);
    let owner = text("owner");
    let trace_id = event
        .traceparent
        .as_deref()
        .and_then(|traceparent| traceparent.split('-').nth(1))
        .map(str::to_owned);
    let summary = format!(
        "{} {} {} to {}: {status}",
        owner.as_deref().unwrap_or("someone"),
        if event.type_ == "transaction.created" { "pays" } else { "paid" },
        amount.as_deref().unwrap_or("an amount"),
        beneficiary
            .as_ref()
            .and_then(|b| b.get("display").and_then(Value::as_str))
            .unwrap_or("a beneficiary"),
    );
    let document = json!({
        "payment_id": payment_id,
        "event": event.type_,
        "event_id": event.id,
        "time": event.time,
        "owner": owner,
        "debtor_account": data.get("debtor_account").or_else(|| data.get("debtor_account_id")),
        "amount": amount,
        "amount_minor": amount_minor,
        "currency": currency.map(Currency::code),
        "beneficiary": beneficiary,
        "reference": text("reference"),
        "status_entry": {
            "status": status,
            "at": event.time,
            "reason": data.get("failure_code").or_else(|| data.get("reason")),
        },
        "trace_id": trace_id,
    });
    let entry = ActivityEntry {
        id,
        payment_id,
        at_ms,
        action: event.type_.clone(),
        summary: truncate(summary, crate::activity::MAX_ACTIVITY_FIELD_BYTES),
        document,
    };
    entry.validate().map_err(|e| ConsumeError::Invalid(e.to_string()))?;
    Ok(Some(entry))
}

/// The beneficiary as a person reads it: a name and a masked IBAN, or the internal account.
fn beneficiary_for_humans(beneficiary: &Value) -> Value {
    let field = |key: &str| beneficiary.get(key).and_then(Value::as_str);
    match (field("iban"), field("account")) {
        (Some(iban), _) => {
            let electronic: String = iban.chars().filter(|c| !c.is_whitespace()).collect();
            let tail: String =
                electronic.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
            let masked = format!("{}…{tail}", electronic.chars().take(4).collect::<String>());
            let name = field("name").unwrap_or("an external account");
            json!({
                "kind": "external",
                "name": field("name"),
                "iban": masked,
                "country": field("country"),
                "display": format!("{name} ({masked})"),
            })
        }
        (None, Some(account)) => json!({
            "kind": "internal",
            "account": account,
            "display": format!("account {account}"),
        }),
        (None, None) => json!({ "display": "a beneficiary" }),
    }
}

/// The status a payment event announces when its data carries none.
fn status_of(event_type: &str) -> &'static str {
    match event_type {
        "payment.held_for_review" => "held_for_review",
        "payment.rejected" => "rejected",
        "transaction.created" => "pending",
        "transaction.processing" => "processing",
        "transaction.completed" => "completed",
        "transaction.failed" => "failed",
        "transaction.cancelled" => "cancelled",
        _ => "unknown",
    }
}

fn truncate(mut text: String, max_bytes: usize) -> String {
    if text.len() > max_bytes {
        let mut cut = max_bytes;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Unix milliseconds of an RFC 3339 `date-time` (`2025-01-31T12:00:00.123+01:00`);
/// fractions beyond milliseconds are cut. `None` when it is not one.
pub fn unix_ms_from_rfc3339(text: &str) -> Option<i64> {
    if !crate::bus::is_rfc3339(text) {
        return None;
    }
    let b = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> i64 {
        b[range].iter().fold(0, |n, d| n * 10 + i64::from(*d - b'0'))
    };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    let seconds = number(11..13) * 3_600 + number(14..16) * 60 + number(17..19);
    let mut rest = &b[19..];
    let mut millis = 0_i64;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        for i in 0..3 {
            millis = millis * 10
                + fraction.get(i).filter(|_| i < len).map_or(0, |d| i64::from(d - b'0'));
        }
        rest = &fraction[len..];
    }
    let offset_s = match rest {
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digit = |d: &u8| i64::from(d - b'0');
            let offset = (digit(h1) * 10 + digit(h2)) * 3_600 + (digit(m1) * 10 + digit(m2)) * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => 0,
    };
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + seconds - offset_s) * 1_000 + millis)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::bus::rfc3339_from_unix_ms;

    fn payment_event(type_: &str, data: Value) -> Event {
        Event::new(
            Uuid::now_v7(),
            "/ferrobank/payments",
            type_,
            "acct-1",
            "2025-01-31T12:00:00.250Z",
            data,
        )
        .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    }

    #[test]
    fn the_subscription_fits_the_bus_limits() {
        validate_audit_subscription().unwrap();
    }

    #[test]
    fn rfc3339_round_trips_through_unix_ms() {
        for ms in [0, 1_738_324_800_123, -86_400_001, 951_782_400_999] {
            assert_eq!(unix_ms_from_rfc3339(&rfc3339_from_unix_ms(ms)), Some(ms));
        }
        assert_eq!(unix_ms_from_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(unix_ms_from_rfc3339("1970-01-01T00:00:00.1234567Z"), Some(123));
        assert_eq!(unix_ms_from_rfc3339("1969-12-31T23:00:00-01:00"), Some(0));
        assert_eq!(unix_ms_from_rfc3339("yesterday"), None);
    }

    #[test]
    fn a_payment_event_becomes_a_record_of_its_actor_and_payment() {
        let event = payment_event(
            "transaction.completed",
            json!({
                "payment_id": "p-1", "amount": 1234, "currency": "EUR", "status": "completed",
                "owner": "alice", "actor": {"kind": "subject", "id": "alice-sub"},
                "beneficiary": {"kind": "external", "iban": "DE89370400440532013000",
                                "name": "Erika Mustermann", "country": "DE"},
            }),
        );
        let entry = audit_entry(&event).unwrap();
        assert_eq!(entry.id.to_string(), event.id);
        assert_eq!(entry.at_ms, 1_738_324_800_250);
        assert_eq!(entry.actor, AuditActor::subject("alice-sub").unwrap());
        assert_eq!(entry.action.as_str(), "transaction.completed");
        assert_eq!(entry.resource, "payment:p-1");
        assert_eq!(entry.outcome, AuditOutcome::Success);
        assert_eq!(entry.details["amount"], 1234);
        assert_eq!(entry.details["status"], "completed");
        assert_eq!(entry.details["event_id"], event.id);
        assert!(entry.details["traceparent"].is_string());
        assert!(entry.details.get("beneficiary").is_none(), "details stay compact");

        let activity = activity_entry(&event).unwrap().unwrap();
        assert_eq!(activity.payment_id, "p-1");
        assert_eq!(activity.document["amount"], "12.34 EUR");
        assert_eq!(activity.document["beneficiary"]["iban"], "DE89…3000");
        assert_eq!(activity.document["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(activity.document["status_entry"]["status"], "completed");
        assert_eq!(
            activity.summary,
            "alice paid 12.34 EUR to Erika Mustermann (DE89…3000): completed"
        );
    }

    #[test]
    fn ledger_events_are_attributed_to_the_service() {
        let event = Event::new(
            Uuid::now_v7(),
            "/ferrobank/ledger",
            "transfer.posted",
            "acct-1",
            "2025-01-31T12:00:00Z",
            json!({"transfer_id": "t-1", "amount": 5, "currency": "JPY", "pending": false}),
        );
        let entry = audit_entry(&event).unwrap();
        assert_eq!(entry.actor, AuditActor::service("ferrobank").unwrap());
        assert_eq!(entry.resource, "transfer:t-1");
        assert!(entry.details.get("pending").is_none());
        assert!(activity_entry(&event).unwrap().is_none());
        let service = Event {
            data: json!({"account_id": "a-1", "actor": "payment-worker"}),
            type_: "account.opened".into(),
            ..event
        };
        let entry = audit_entry(&service).unwrap();
        assert_eq!(entry.actor, AuditActor::service("payment-worker").unwrap());
        assert_eq!(entry.resource, "account:a-1");
    }

    #[test]
    fn unreadable_events_are_invalid() {
        let no_id = payment_event("payment.rejected", json!({"amount": 1}));
        assert!(matches!(audit_entry(&no_id), Err(ConsumeError::Invalid(_))));
        let bad_actor = payment_event("payment.rejected", json!({"payment_id": "p", "actor": 3}));
        assert!(matches!(audit_entry(&bad_actor), Err(ConsumeError::Invalid(_))));
        let not_uuid = Event {
            id: "evt-1".into(),
            ..payment_event("payment.rejected", json!({"payment_id": "p"}))
        };
        assert!(matches!(audit_entry(&not_uuid), Err(ConsumeError::Invalid(_))));
    }
}
