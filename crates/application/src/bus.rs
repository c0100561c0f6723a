//! The event bus as a port: CloudEvents 1.0 envelopes published with the broker's
//! confirmation and consumed at least once by named consumers.
//!
//! A consumer is a name (`payments-worker`, `notifications`) owning one queue that every
//! subscription under that name shares: an event published to a type the consumer is bound
//! to reaches the consumer once, whichever of its subscriptions takes it, and survives the
//! subscriptions (bindings only grow). Every consumer bound to a type gets every event of it
//! (fan-out). Events published before a consumer's first subscription are not kept for it.
//!
//! A [`Delivery`] is settled exactly once: [`Delivery::ack`] (done), [`Delivery::retry`]
//! (again after the [`RetryPolicy`]'s backoff, with `attempt + 1`; after `max_attempts` to
//! the consumer's dead-letter queue) or [`Delivery::reject`] (straight to the dead-letter
//! queue). A delivery dropped unsettled stays in flight until its subscription ends; then it
//! is delivered again with the same attempt and `redelivered` set. Consumers therefore see
//! an event more than once and de-duplicate by [`Event::id`].
//!
//! Order: one subscription receives the first deliveries of a subject's events in publish
//! order. A retried event comes back after the events published meanwhile, and competing
//! subscriptions of one consumer each see part of the stream.
//!
//! Every backend answers the same way; `ferrobank-adapters/tests/bus.rs` is the conformance
//! suite that holds them to it.

use std::collections::HashMap;
use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use uuid::Uuid;

/// The CloudEvents specification version every event carries (`specversion`).
pub const SPEC_VERSION: &str = "1.0";
/// The only `datacontenttype` ferrobank publishes: `data` is a JSON value.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// The media type of an event serialized whole (CloudEvents JSON format, structured mode).
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// Largest serialized event, in bytes: brokers, queues and consumers hold events in memory.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Longest `id`, `source` or `subject`, in bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 256;
/// Longest event type, in bytes (it is a routing key).
pub const MAX_TYPE_BYTES: usize = 128;
/// Longest consumer name, in bytes (it names queues).
pub const MAX_CONSUMER_BYTES: usize = 64;
/// Most event types one subscription binds.
pub const MAX_TYPES_PER_SUBSCRIPTION: usize = 32;
/// Unsettled deliveries one subscription holds by default (AMQP `basic.qos`).
pub const DEFAULT_PREFETCH: u16 = 32;
/// Most unsettled deliveries a subscription may hold.
pub const MAX_PREFETCH: u16 = 1_000;
/// Most dead letters one [`EventBus::dead_letters`] call returns.
pub const MAX_DEAD_LETTERS_READ: usize = 1_000;
/// Most attempts a [`RetryPolicy`] may allow.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest backoff a [`RetryPolicy`] may ask for, in milliseconds: one day.
pub const MAX_BACKOFF_MS: u64 = 24 * 3600 * 1_000;

/// One event: the CloudEvents 1.0 context attributes ferrobank uses, its JSON `data`, and
/// the W3C `traceparent` (the CloudEvents distributed-tracing extension).
///
/// Serialized in the CloudEvents JSON format with `specversion` `"1.0"`; [`Event::validate`]
/// is what every bus checks before publishing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "WireEvent")]
pub struct Event {
    /// Unique per event (a UUID, v7 for new events); consumers de-duplicate on it.
    pub id: String,
    /// Who announced it, a URI reference (`/ferrobank/ledger`).
    pub source: String,
    /// What happened (`transaction.created`): the routing key consumers bind to.
    pub type_: String,
    /// What it is about: the account, also the key that orders events (the partition key).
    pub subject: String,
    /// When it happened, RFC 3339 (`2025-01-31T12:00:00.000Z`); passed in, never read
    /// from a clock here.
    pub time: String,
    /// Always [`DATA_CONTENT_TYPE`].
    pub datacontenttype: String,
    /// The payload.
    pub data: Value,
    /// The W3C trace context of the change that caused the event, if it was traced.
    pub traceparent: Option<String>,
}

/// The CloudEvents JSON representation (what goes on the wire).
#[derive(Serialize, Deserialize)]
struct WireEvent {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    type_: String,
    subject: String,
    time: String,
    datacontenttype: String,
    data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct WireRef<'a> {
            specversion: &'static str,
            id: &'a str,
            source: &'a str,
            #[serde(rename = "type")]
            type_: &'a str,
            subject: &'a str,
            time: &'a str,
            datacontenttype: &'a str,
            data: &'a Value,
            #[serde(skip_serializing_if = "Option::is_none")]
            traceparent: Option<&'a str>,
        }
        WireRef {
            specversion: SPEC_VERSION,
            id: &self.id,
            source: &self.source,
            type_: &self.type_,
            subject: &self.subject,
            time: &self.time,
            datacontenttype: &self.datacontenttype,
            data: &self.data,
            traceparent: self.traceparent.as_deref(),
        }
        .serialize(serializer)
    }
}

impl TryFrom<WireEvent> for Event {
    type Error = String;

    fn try_from(wire: WireEvent) -> Result<Self, Self::Error> {
        if wire.specversion != SPEC_VERSION {
            return Err(format!("unsupported specversion {:?}", wire.specversion));
        }
        Ok(Self {
            id: wire.id,
            source: wire.source,
            type_: wire.type_,
            subject: wire.subject,
            time: wire.time,
            datacontenttype: wire.datacontenttype,
            data: wire.data,
            traceparent: wire.traceparent,
        })
    }
}

impl Event {
    /// An event with JSON `data` and no trace context.
    pub fn new(
        id: Uuid,
        source: impl Into<String>,
        type_: impl Into<String>,
        subject: impl Into<String>,
        time: impl Into<String>,
        data: Value,
    ) -> Self {
        Self {
            id: id.to_string(),
            source: source.into(),
            type_: type_.into(),
            subject: subject.into(),
            time: time.into(),
            datacontenttype: DATA_CONTENT_TYPE.into(),
            data,
            traceparent: None,
        }
    }

    /// The same event carrying a W3C `traceparent`.
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Checks every attribute against CloudEvents and ferrobank's bounds.
    pub fn validate(&self) -> Result<(), BusError> {
        let invalid = |reason: String| Err(BusError::InvalidEvent(reason));
        for (name, value) in
            [("id", &self.id), ("source", &self.source), ("subject", &self.subject)]
        {
            if value.is_empty() || value.len() > MAX_ATTRIBUTE_BYTES {
                return invalid(format!("{name} must be 1 to {MAX_ATTRIBUTE_BYTES} bytes"));
            }
            if value.chars().any(char::is_control) {
                return invalid(format!("{name} contains a control character"));
            }
        }
        validate_type(&self.type_)?;
        if !is_rfc3339(&self.time) {
            return invalid(format!("time {:?} is not an RFC 3339 timestamp", self.time));
        }
        if self.datacontenttype != DATA_CONTENT_TYPE {
            return invalid(format!("datacontenttype must be {DATA_CONTENT_TYPE}"));
        }
        if let Some(traceparent) = &self.traceparent
            && !is_traceparent(traceparent)
        {
            return invalid(format!("traceparent {traceparent:?} is not a W3C traceparent"));
        }
        Ok(())
    }

    /// The event in the CloudEvents JSON format, validated and within [`MAX_EVENT_BYTES`].
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, BusError> {
        self.validate()?;
        let bytes = serde_json::to_vec(self).map_err(|e| BusError::InvalidEvent(e.to_string()))?;
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(BusError::TooLarge { bytes: bytes.len(), max_bytes: MAX_EVENT_BYTES });
        }
        Ok(bytes)
    }

    /// Reads an event in the CloudEvents JSON format, refusing what `to_json_bytes` would.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, BusError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(BusError::TooLarge { bytes: bytes.len(), max_bytes: MAX_EVENT_BYTES });
        }
        let event: Self =
            serde_json::from_slice(bytes).map_err(|e| BusError::InvalidEvent(e.to_string()))?;
        event.validate()?;
        Ok(event)
    }
}

/// Checks an event type: 1 to [`MAX_TYPE_BYTES`] of `[a-z0-9._-]`, no empty dot-separated
/// word. Types are exact names: no AMQP wildcards.
pub fn validate_type(type_: &str) -> Result<(), BusError> {
    let well_formed = !type_.is_empty()
        && type_.len() <= MAX_TYPE_BYTES
        && type_.split('.').all(|word| !word.is_empty())
        && type_
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if well_formed {
        Ok(())
    } else {
        Err(BusError::InvalidEvent(format!(
            "type {type_:?} must be 1 to {MAX_TYPE_BYTES} bytes of [a-z0-9._-] without empty words"
        )))
    }
}

/// Checks a consumer name: 1 to [`MAX_CONSUMER_BYTES`] of `[a-z0-9_-]` starting with a
/// letter or digit (no `.`: it separates the parts of queue names).
pub fn validate_consumer(consumer: &str) -> Result<(), BusError> {
    let name_ok = consumer.len() <= MAX_CONSUMER_BYTES
        && consumer.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && consumer
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
    if name_ok {
        Ok(())
    } else {
        Err(BusError::InvalidSubscription(format!(
            "consumer {consumer:?} must be 1 to {MAX_CONSUMER_BYTES} bytes of [a-z0-9_-]"
        )))
    }
}

/// Checks a subscription: a valid consumer name and 1 to [`MAX_TYPES_PER_SUBSCRIPTION`]
/// valid types.
pub fn validate_subscription(consumer: &str, types: &[&str]) -> Result<(), BusError> {
    validate_consumer(consumer)?;
    if types.is_empty() || types.len() > MAX_TYPES_PER_SUBSCRIPTION {
        return Err(BusError::InvalidSubscription(format!(
            "a subscription binds 1 to {MAX_TYPES_PER_SUBSCRIPTION} types"
        )));
    }
    for type_ in types {
        validate_type(type_).map_err(|e| BusError::InvalidSubscription(e.to_string()))?;
    }
    Ok(())
}

/// How often and how patiently a consumer's failing deliveries are tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries of one event, the first included; a retry of the last one dead-letters it.
    pub max_attempts: u32,
    /// Wait before the second attempt, in milliseconds; doubled for every further one.
    pub initial_backoff_ms: u64,
    /// Longest wait between two attempts, in milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 5, initial_backoff_ms: 1_000, max_backoff_ms: 60_000 }
    }
}

impl RetryPolicy {
    /// Checks the bounds: 1 to [`MAX_ATTEMPTS_LIMIT`] attempts, backoffs from 1 ms to
    /// [`MAX_BACKOFF_MS`], the initial one at most the longest.
    pub fn validate(&self) -> Result<(), BusError> {
        let ok = (1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts)
            && self.initial_backoff_ms >= 1
            && self.initial_backoff_ms <= self.max_backoff_ms
            && self.max_backoff_ms <= MAX_BACKOFF_MS;
        if ok {
            Ok(())
        } else {
            Err(BusError::InvalidOptions(format!(
                "retry policy {self:?}: 1 to {MAX_ATTEMPTS_LIMIT} attempts, \
                 1 <= initial_backoff_ms <= max_backoff_ms <= {MAX_BACKOFF_MS}"
            )))
        }
    }

    /// The wait after attempt `attempt` (1-based) failed, before attempt `attempt + 1`:
    /// `initial_backoff_ms * 2^(attempt - 1)`, at most `max_backoff_ms`.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1).min(63);
        self.initial_backoff_ms.saturating_mul(1u64 << doublings).min(self.max_backoff_ms)
    }

    /// Every distinct backoff the policy uses, shortest first (a broker may need one
    /// delay queue per value).
    pub fn backoffs_ms(&self) -> Vec<u64> {
        let mut backoffs: Vec<u64> =
            (1..self.max_attempts).map(|attempt| self.backoff_ms(attempt)).collect();
        backoffs.dedup();
        backoffs
    }
}

/// The publishing and consuming side of the bus.
#[async_trait]
pub trait EventBus: Send + Sync + Debug {
    /// Publishes `event` to every consumer bound to its type; returns once the broker has
    /// confirmed it is stored. An error means it may or may not have been published:
    /// publish again (consumers de-duplicate).
    async fn publish(&self, event: &Event) -> Result<(), BusError>;

    /// Publishes `events` and answers one result per event, in the order given. Order per
    /// subject holds: once an event of a subject fails, the subject's later events are not
    /// published (their results say so), so a caller that publishes each subject's failed
    /// rest again never delivers an event before an earlier one of its subject. This
    /// default publishes a subject's events one after the other and subjects side by side;
    /// a broker that takes many events per request overrides it.
    async fn publish_all(&self, events: &[Event]) -> Vec<Result<(), BusError>> {
        let mut by_subject: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, event) in events.iter().enumerate() {
            by_subject.entry(event.subject.as_str()).or_default().push(i);
        }
        let chains = by_subject.into_values().map(|indices| async move {
            let mut results = Vec::with_capacity(indices.len());
            let mut failed = false;
            for i in indices {
                let result = match failed {
                    true => Err(not_attempted()),
                    false => self.publish(&events[i]).await,
                };
                failed |= result.is_err();
                results.push((i, result));
            }
            results
        });
        let mut all: Vec<Result<(), BusError>> =
            events.iter().map(|_| Err(not_attempted())).collect();
        for chain in futures_util::future::join_all(chains).await {
            for (i, result) in chain {
                all[i] = result;
            }
        }
        all
    }

    /// Binds `consumer` to `types` (creating its queue on first use) and starts receiving
    /// its events.
    async fn subscribe(
        &self,
        consumer: &str,
        types: &[&str],
    ) -> Result<Box<dyn Subscription>, BusError>;

    /// Up to `max` (at most [`MAX_DEAD_LETTERS_READ`]) of `consumer`'s dead letters, oldest
    /// first, without removing them.
    async fn dead_letters(&self, consumer: &str, max: usize) -> Result<Vec<DeadLetter>, BusError>;
}

/// A stream of deliveries for one consumer.
#[async_trait]
pub trait Subscription: Send + Debug {
    /// The next delivery; waits for one. Cancel-safe: dropping the future loses nothing.
    /// Holding [`Subscription::prefetch`] unsettled deliveries makes it wait for a
    /// settlement. An [`BusError::Unavailable`] error ends the subscription: subscribe again.
    async fn next(&mut self) -> Result<Delivery, BusError>;

    /// How many unsettled deliveries this subscription may hold.
    fn prefetch(&self) -> u16;

    /// The next delivery (waiting for it) and every other one already there, up to `max`
    /// in all (and the prefetch): what a consumer that records a batch in one transaction
    /// takes at once. An error after the first delivery ends the batch and comes beside
    /// it: the deliveries taken are still the caller's to settle, then it subscribes again.
    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<(Vec<Delivery>, Option<BusError>), BusError> {
        use futures_util::FutureExt;
        let mut batch = vec![self.next().await?];
        while batch.len() < max {
            // `next` is cancel-safe: a delivery not ready yet is not lost.
            match self.next().now_or_never() {
                Some(Ok(delivery)) => batch.push(delivery),
                Some(Err(error)) => return Ok((batch, Some(error))),
                None => break,
            }
        }
        Ok((batch, None))
    }
}

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the event leaves the consumer's queue.
    Ack,
    /// Failed for now: deliver again after the backoff, or dead-letter after the last
    /// attempt.
    Retry,
    /// Will never succeed: to the consumer's dead-letter queue.
    Reject,
}

/// A backend's handle on one unsettled delivery.
#[async_trait]
pub trait Settle: Send + Debug {
    /// Settles the delivery; an error leaves the event to be delivered again.
    async fn settle(self: Box<Self>, outcome: Outcome) -> Result<(), BusError>;
}

/// One event delivered to a consumer, to be settled exactly once.
#[derive(Debug)]
#[must_use = "an unsettled delivery is delivered again when its subscription ends"]
pub struct Delivery {
    event: Event,
    attempt: u32,
    redelivered: bool,
    settle: Box<dyn Settle>,
}

impl Delivery {
    /// A delivery (for backends): `attempt` counts from 1; `redelivered` when an earlier
    /// delivery of the same attempt was never settled.
    pub fn new(event: Event, attempt: u32, redelivered: bool, settle: Box<dyn Settle>) -> Self {
        Self { event, attempt, redelivered, settle }
    }

    /// The event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether this attempt was delivered before and left unsettled (a consumer crashed).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// Done: removes the event from the consumer's queue.
    pub async fn ack(self) -> Result<(), BusError> {
        self.settle.settle(Outcome::Ack).await
    }

    /// Try again later: delivered again after the backoff with `attempt + 1`, or, if this
    /// was the last attempt, moved to the dead-letter queue.
    pub async fn retry(self) -> Result<(), BusError> {
        self.settle.settle(Outcome::Retry).await
    }

    /// Never going to work: moved to the consumer's dead-letter queue now.
    pub async fn reject(self) -> Result<(), BusError> {
        self.settle.settle(Outcome::Reject).await
    }
}

/// Why an event is in a dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The consumer rejected it.
    Rejected,
    /// The consumer retried its last attempt.
    MaxAttempts,
    /// The message was not a valid event (it never reached the consumer).
    Malformed,
}

impl DeadLetterReason {
    /// The stable name (metric label, message header).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::MaxAttempts => "max_attempts",
            Self::Malformed => "malformed",
        }
    }

    /// The reason named by [`DeadLetterReason::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Rejected, Self::MaxAttempts, Self::Malformed]
            .into_iter()
            .find(|reason| reason.as_str() == name)
    }
}

/// An event in a consumer's dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The event; `None` when the message was not a valid event.
    pub event: Option<Event>,
    /// The attempt that was dead-lettered.
    pub attempt: u32,
    /// Why.
    pub reason: DeadLetterReason,
}

/// What can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The event breaks CloudEvents or ferrobank's rules; publishing it again cannot help.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The serialized event is larger than [`MAX_EVENT_BYTES`].
    #[error("event of {bytes} bytes is larger than {max_bytes} bytes")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The bound.
        max_bytes: usize,
    },
    /// A consumer name or type list breaks the rules.
    #[error("invalid subscription: {0}")]
    InvalidSubscription(String),
    /// Options out of bounds.
    #[error("invalid bus options: {0}")]
    InvalidOptions(String),
    /// A consumer's queue is at its bound: publish again later.
    #[error("the queue of consumer {consumer} is full")]
    Full {
        /// Whose queue.
        consumer: String,
    },
    /// The broker refused to store the event (a negative confirmation).
    #[error("the broker refused the event (nack)")]
    Nacked,
    /// The delivery's subscription ended before it was settled; it will be delivered again.
    #[error("the delivery is no longer in flight (its subscription ended)")]
    NotInFlight,
    /// The broker cannot be reached or did not answer in time.
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

/// The result of an event [`EventBus::publish_all`] left out because an earlier event of
/// its subject failed.
pub fn not_attempted() -> BusError {
    BusError::Unavailable("not published: an earlier event of its subject failed".into())
}

/// `unix_ms` as an RFC 3339 UTC timestamp with milliseconds (`1970-01-01T00:00:00.000Z`),
/// for years 0 to 9999 (clamped beyond).
pub fn rfc3339_from_unix_ms(unix_ms: i64) -> String {
    // 0000-01-01 and 9999-12-31T23:59:59.999 in Unix milliseconds.
    const MIN_MS: i64 = -62_167_219_200_000;
    const MAX_MS: i64 = 253_402_300_799_999;
    let unix_ms = unix_ms.clamp(MIN_MS, MAX_MS);
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1_000 % 60,
        ms_of_day % 1_000
    )
}

/// Whether `s` is an RFC 3339 `date-time`: `YYYY-MM-DDTHH:MM:SS`, optional fraction,
/// then `Z` or `±HH:MM` (ranges checked per field, not per calendar month).
pub fn is_rfc3339(s: &str) -> bool {
    const SHAPE: &[u8; 19] = b"0000-00-00T00:00:00";
    let b = s.as_bytes();
    let Some(head) = b.get(..SHAPE.len()) else { return false };
    let shape_ok = head.iter().zip(SHAPE).all(|(c, shape)| match shape {
        b'0' => c.is_ascii_digit(),
        b'T' => matches!(c, b'T' | b't'),
        _ => c == shape,
    });
    if !shape_ok {
        return false;
    }
    let number = |range: std::ops::Range<usize>| -> u32 {
        b[range].iter().fold(0, |n, d| n * 10 + u32::from(*d - b'0'))
    };
    let in_range = (1..=12).contains(&number(5..7))
        && (1..=31).contains(&number(8..10))
        && number(11..13) <= 23
        && number(14..16) <= 59
        && number(17..19) <= 60;
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if len == 0 {
            return false;
        }
        rest = &fraction[len..];
    }
    let offset_ok = match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit())
                && (h1 - b'0') * 10 + (h2 - b'0') <= 23
                && (m1 - b'0') * 10 + (m2 - b'0') <= 59
        }
        _ => false,
    };
    in_range && offset_ok
}

/// Whether `s` is a W3C trace-context `traceparent` of version `00`:
/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase, ids not all zero.
pub fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, len: usize| {
        p.len() == len && p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let not_zero = |p: &str| p.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if *version == "00" && hex(trace, 32) && hex(parent, 16) && hex(flags, 2)
            && not_zero(trace) && not_zero(parent))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event::new(
            Uuid::now_v7(),
            "/ferrobank/ledger",
            "transfer.created",
            "acct-1",
            "2025-01-31T12:00:00.000Z",
            serde_json::json!({"amount": 100}),
        )
        .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    }

    #[test]
    fn serializes_as_cloudevents_json_and_reads_back() {
        let event = event();
        let bytes = event.to_json_bytes().unwrap();
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "transfer.created");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["traceparent"], event.traceparent.clone().unwrap());
        assert!(json.get("type_").is_none());
        assert_eq!(Event::from_json_bytes(&bytes).ok(), Some(event));
    }

    #[test]
    fn refuses_other_spec_versions_and_bad_attributes() {
        let mut json = serde_json::to_value(event()).unwrap();
        json["specversion"] = "0.3".into();
        let bytes = serde_json::to_vec(&json).unwrap();
        assert!(matches!(Event::from_json_bytes(&bytes), Err(BusError::InvalidEvent(_))));

        let bad = [
            Event { id: String::new(), ..event() },
            Event { type_: "transfer.*".into(), ..event() },
            Event { type_: "Transfer".into(), ..event() },
            Event { type_: "a..b".into(), ..event() },
            Event { time: "2025-01-31 12:00:00".into(), ..event() },
            Event { time: "2025-13-31T12:00:00Z".into(), ..event() },
            Event { datacontenttype: "text/plain".into(), ..event() },
            event().with_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            event().with_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        ];
        for event in bad {
            assert!(event.validate().is_err(), "{event:?}");
        }
        let large = Event { data: Value::String("x".repeat(MAX_EVENT_BYTES)), ..event() };
        assert!(matches!(large.to_json_bytes(), Err(BusError::TooLarge { .. })));
    }

    #[test]
    fn rfc3339_round_numbers() {
        assert_eq!(rfc3339_from_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_from_unix_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_from_unix_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_from_unix_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
        for ms in [0, 1_738_324_800_000, -86_400_001] {
            assert!(is_rfc3339(&rfc3339_from_unix_ms(ms)));
        }
        assert!(is_rfc3339("2025-01-31T12:00:00+01:00"));
        assert!(!is_rfc3339("2025-01-31T12:00:00."));
        assert!(!is_rfc3339("2025-01-31T12:00"));
    }

    #[test]
    fn backoff_doubles_up_to_the_bound() {
        let policy = RetryPolicy { max_attempts: 6, initial_backoff_ms: 100, max_backoff_ms: 500 };
        let backoffs: Vec<u64> = (1..6).map(|a| policy.backoff_ms(a)).collect();
        assert_eq!(backoffs, [100, 200, 400, 500, 500]);
        assert_eq!(policy.backoffs_ms(), [100, 200, 400, 500]);
        assert_eq!(policy.backoff_ms(200), 500);
        assert!(RetryPolicy { max_attempts: 0, ..policy }.validate().is_err());
    }

    #[test]
    fn subscriptions_are_bounded() {
        assert!(validate_subscription("payments-worker", &["transaction.created"]).is_ok());
        assert!(validate_subscription("", &["a"]).is_err());
        assert!(validate_subscription("-x", &["a"]).is_err());
        assert!(validate_subscription("a.b", &["a"]).is_err());
        assert!(validate_subscription("a", &[]).is_err());
        assert!(validate_subscription("a", &["#"]).is_err());
    }
}
