//! Notifications of payment events: an in-app inbox per customer and signed webhooks
//! (Standard Webhooks) with a delivery log, retries and replay.
//!
//! The `notifications` consumer of the event bus hands every payment event to
//! [`NotificationService::on_event`], which records, in one store transaction, one in-app
//! [`Notification`] per (owner, event id) and one [`WebhookDelivery`] per (endpoint, event
//! id) for each of the owner's active endpoints subscribed to the type. Unique keys make a
//! redelivered event a no-op. A deliverer (`ferrobank-interfaces::webhooks`) then claims due
//! deliveries ([`NotificationService::claim_due`]), sends them and records every attempt
//! ([`NotificationService::record_attempt`]), which schedules the next one by the
//! [`WebhookPolicy`].
//!
//! With an SMTP server configured ([`NotificationService::with_email`]) the same
//! transaction also records one [`EmailDelivery`] per (owner, event id) to the owner's
//! verified address, found through the [`RecipientDirectory`] port (the identity store);
//! an owner without one gets a `skipped` row saying why. The email deliverer
//! (`ferrobank-interfaces::email`) claims and records them like webhooks, by the same
//! policy: at least once, and never twice for a redelivered event.
//!
//! Webhook URLs on loopback, private, link-local or unique-local addresses (and
//! `localhost`) are refused unless [`WebhookPolicy::allow_private`]: see
//! [`forbidden_address`], which the deliverer also applies to resolved addresses.
//!
//! Who sees what mirrors [`crate::access`]: a customer sees only what it owns (anything
//! else is "not found"), `banking-admin` sees everything, and with authentication off
//! (`None` caller) everything is visible.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ferrobank_domain::{Currency, Principal, Role};
use rand::RngCore;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::bus::Event;
use crate::clock::Clock;
use crate::ports::StoreError;

/// The bus consumer name.
pub const CONSUMER: &str = "notifications";
/// The event types the consumer subscribes to, and the only ones an endpoint may name.
pub const EVENT_TYPES: [&str; 6] = [
    "transaction.created",
    "transaction.completed",
    "transaction.failed",
    "transaction.cancelled",
    "payment.held_for_review",
    "payment.rejected",
];
/// Most active webhook endpoints one owner may have.
pub const MAX_ENDPOINTS_PER_OWNER: usize = 10;
/// Most endpoints (active and disabled, newest first) one listing returns.
pub const MAX_LISTED_ENDPOINTS: u32 = 100;
/// Longest endpoint URL, in bytes.
pub const MAX_URL_BYTES: usize = 2_048;
/// Longest endpoint description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// Longest owner (a token subject), in bytes.
pub const MAX_OWNER_BYTES: usize = 256;
/// Default page size of notification and delivery listings.
pub const DEFAULT_PAGE_LIMIT: u32 = 20;
/// Largest page size of notification and delivery listings.
pub const MAX_PAGE_LIMIT: u32 = 100;
/// Most attempts of one delivery a listing shows (the latest ones).
pub const MAX_LISTED_ATTEMPTS: u32 = 50;
/// Most attempt series of one delivery (the first plus the replays).
pub const MAX_SERIES: u32 = 50;
/// Prefix of a signing secret (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a signing secret.
pub const SECRET_BYTES: usize = 24;
/// Most attempts a [`WebhookPolicy`] may allow.
pub const MAX_ATTEMPTS_LIMIT: u32 = 50;
/// Longest backoff or timeout a [`WebhookPolicy`] may ask for, in milliseconds: one day.
pub const MAX_WAIT_MS: u64 = 24 * 3_600 * 1_000;
/// A claim outlives the attempt's timeout by this much before another deliverer may take
/// the delivery over (its first deliverer crashed).
pub const LEASE_MARGIN_MS: u64 = 30_000;

/// How webhooks are delivered: attempts, backoffs, timeout, schemes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookPolicy {
    /// Attempts of one series, the first included; after the last failure: `failed`.
    pub max_attempts: u32,
    /// Wait after failed attempt `n` (1-based) is `backoff_ms[n - 1]`, the last value
    /// repeating, in milliseconds.
    pub backoff_ms: Vec<u64>,
    /// Longest one attempt may take (connect, send, read the answer), in milliseconds.
    pub timeout_ms: u64,
    /// Whether `http://` endpoints may be registered (else `https://` only).
    pub allow_http: bool,
    /// Whether endpoints may be (or resolve to) loopback, private, link-local or
    /// unique-local addresses; off, such URLs are refused and such connections not made.
    pub allow_private: bool,
}

impl Default for WebhookPolicy {
    /// The Standard Webhooks suggestion: at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h.
    fn default() -> Self {
        Self {
            max_attempts: 7,
            backoff_ms: vec![5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000],
            timeout_ms: 10_000,
            allow_http: true,
            allow_private: false,
        }
    }
}

impl WebhookPolicy {
    /// Checks the bounds: 1 to [`MAX_ATTEMPTS_LIMIT`] attempts, at least one backoff, each
    /// backoff and the timeout from 1 ms to [`MAX_WAIT_MS`].
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return Err(format!("max_attempts must be 1 to {MAX_ATTEMPTS_LIMIT}"));
        }
        if self.backoff_ms.is_empty() || self.backoff_ms.len() > MAX_ATTEMPTS_LIMIT as usize {
            return Err(format!("backoff_ms must list 1 to {MAX_ATTEMPTS_LIMIT} waits"));
        }
        if self
            .backoff_ms
            .iter()
            .chain([&self.timeout_ms])
            .any(|ms| !(1..=MAX_WAIT_MS).contains(ms))
        {
            return Err(format!("backoff_ms and timeout_ms must be 1 to {MAX_WAIT_MS}"));
        }
        Ok(())
    }

    /// The wait after failed attempt `attempt` (1-based), in milliseconds.
    pub fn backoff_after_ms(&self, attempt: u32) -> u64 {
        let index = (attempt.max(1) - 1) as usize;
        self.backoff_ms.get(index).or(self.backoff_ms.last()).copied().unwrap_or(1)
    }

    /// How long a claim holds a delivery, in milliseconds.
    pub fn lease_ms(&self) -> u64 {
        self.timeout_ms.saturating_add(LEASE_MARGIN_MS)
    }

    /// What follows attempt `attempt` (1-based) at `now_ms`: delivered, else the next
    /// attempt after its backoff, or `failed` after the last one (or at once when
    /// `retryable` is false). The one schedule of webhooks and emails.
    pub fn after_attempt(
        &self,
        attempt: u32,
        delivered: bool,
        retryable: bool,
        now_ms: i64,
    ) -> (DeliveryStatus, Option<i64>) {
        if delivered {
            (DeliveryStatus::Delivered, None)
        } else if attempt >= self.max_attempts || !retryable {
            (DeliveryStatus::Failed, None)
        } else {
            let backoff = i64::try_from(self.backoff_after_ms(attempt)).unwrap_or(i64::MAX);
            (DeliveryStatus::Pending, Some(now_ms.saturating_add(backoff)))
        }
    }
}

/// Whether a webhook may not connect to `ip` unless private addresses are allowed:
/// unspecified, loopback, private (RFC 1918), shared (RFC 6598), link-local (cloud metadata
/// at 169.254.169.254 included), broadcast, IPv6 unique-local (`fc00::/7`) and link-local
/// (`fe80::/10`), and IPv4 addresses mapped into IPv6.
pub fn forbidden_address(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_unspecified()
                || v6.is_loopback()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Why `url`'s host is refused while private addresses are not allowed: an IP literal
/// that [`forbidden_address`] names, or `localhost` (and its subdomains). `None`: allowed
/// here (a name is checked again once resolved, at delivery).
pub fn forbidden_host(url: &url::Url) -> Option<String> {
    match url.host()? {
        url::Host::Ipv4(ip) if forbidden_address(ip.into()) => {
            Some(format!("{ip} is a loopback, private or link-local address"))
        }
        url::Host::Ipv6(ip) if forbidden_address(ip.into()) => {
            Some(format!("{ip} is a loopback, private or link-local address"))
        }
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            (name == "localhost" || name.ends_with(".localhost"))
                .then(|| format!("{name} is a loopback name"))
        }
        _ => None,
    }
}

/// A customer's webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Its id (UUID v7).
    pub id: Uuid,
    /// Whose events it receives (a token subject).
    pub owner: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The event types it receives, a subset of [`EVENT_TYPES`].
    pub event_types: Vec<String>,
    /// Free text for the owner.
    pub description: Option<String>,
    /// The signing secret, `whsec_` + base64 of [`SECRET_BYTES`] random bytes.
    pub secret: String,
    /// When it was registered, Unix milliseconds.
    pub created_at_ms: i64,
    /// When it was deleted (disabled); it then receives nothing.
    pub disabled_at_ms: Option<i64>,
}

impl WebhookEndpoint {
    /// Whether it still receives events.
    pub fn active(&self) -> bool {
        self.disabled_at_ms.is_none()
    }

    /// Whether it is active and subscribed to `event_type`.
    pub fn receives(&self, event_type: &str) -> bool {
        self.active() && self.event_types.iter().any(|t| t == event_type)
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (or being attempted).
    Pending,
    /// An attempt was answered 2xx.
    Delivered,
    /// Every attempt of its series failed.
    Failed,
    /// Its endpoint was deleted before it was delivered.
    Cancelled,
    /// Never attempted: nothing to send to (an email for an owner without a verified
    /// address); `last_error` says why.
    Skipped,
}

impl DeliveryStatus {
    /// The stable name (stored, and shown by the API).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }

    /// The status named by [`DeliveryStatus::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed, Self::Cancelled, Self::Skipped]
            .into_iter()
            .find(|status| status.as_str() == name)
    }
}

/// One event to one endpoint: a message with a stable `webhook-id`, attempted in series
/// (the first, then one per replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// Its id (UUID v7; listing order).
    pub id: Uuid,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The endpoint's owner.
    pub owner: String,
    /// The bus event it announces (unique per endpoint).
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The `webhook-id` header: the same on every attempt and replay.
    pub message_id: String,
    /// The JSON body, exactly as sent (and signed).
    pub payload: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Its attempt series, from 1; a replay starts the next one.
    pub series: u32,
    /// Attempts made in the current series.
    pub attempts: u32,
    /// When the next attempt is due (pending only), Unix milliseconds.
    pub next_attempt_at_ms: Option<i64>,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: i64,
    /// When it last changed, Unix milliseconds.
    pub updated_at_ms: i64,
    /// The HTTP status of the last attempt, if it got an answer.
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed, if it did without an answer.
    pub last_error: Option<String>,
}

/// One attempt in the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// The delivery.
    pub delivery_id: Uuid,
    /// The series it belongs to.
    pub series: u32,
    /// Its number in the series, from 1.
    pub attempt: u32,
    /// When it started, Unix milliseconds.
    pub at_ms: i64,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// The answer's HTTP status, if there was one.
    pub status_code: Option<u16>,
    /// Why there was no (good) answer: connect error, timeout, disabled endpoint.
    pub error: Option<String>,
    /// The first bytes of the answer's body (at most [`MAX_RESPONSE_PREFIX_BYTES`]).
    pub response_prefix: Option<String>,
}

/// One event's email to its owner: unique per (owner, event id), so a redelivered event
/// sends nothing more; attempted by the email deliverer under the [`WebhookPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailDelivery {
    /// Its id (UUID v7); also the `Message-ID` (`<id@ferrobank>`) on every attempt, so a
    /// mail system can drop a copy sent again after a lost answer.
    pub id: Uuid,
    /// Whose event it announces.
    pub owner: String,
    /// The bus event (unique per owner).
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The address, as the identity store had it; `None` when skipped for lack of one.
    pub recipient: Option<String>,
    /// The subject: the in-app title (`Payment completed: 25.00 EUR`).
    pub subject: String,
    /// The plain-text body.
    pub body: String,
    /// Where it stands (`skipped`: never attempted).
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (pending only), Unix milliseconds.
    pub next_attempt_at_ms: Option<i64>,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: i64,
    /// When it last changed, Unix milliseconds.
    pub updated_at_ms: i64,
    /// Why the last attempt failed, or why it was skipped.
    pub last_error: Option<String>,
}

/// An email a deliverer holds for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedEmail {
    /// The email as claimed (`attempts` not yet counting this one).
    pub email: EmailDelivery,
    /// The claim token: only its holder may record the attempt.
    pub claim: Uuid,
}

/// How one email attempt went, as the deliverer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailOutcome {
    /// The SMTP server accepted the message.
    Sent,
    /// Not accepted; `permanent` failures (a 5xx answer, an unusable address) are not
    /// retried.
    Failed {
        /// Why, for the delivery row.
        error: String,
        /// Whether trying again cannot help.
        permanent: bool,
    },
}

/// Where an owner's email address is found: the identity store.
#[async_trait]
pub trait RecipientDirectory: Send + Sync + std::fmt::Debug {
    /// The address of `owner` (a token subject): `Ok(Err(why))` when there is none to
    /// send to (unknown user, no address, not verified).
    async fn email_of(&self, owner: &str) -> Result<Result<String, String>, StoreError>;
}

/// Most bytes of a response body kept in the delivery log.
pub const MAX_RESPONSE_PREFIX_BYTES: usize = 256;

/// An in-app notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Its id (UUID v7; newest-first order and the cursor).
    pub id: Uuid,
    /// Whom it is for.
    pub owner: String,
    /// The bus event it is about (unique per owner).
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The payment, if the event named one.
    pub payment_id: Option<String>,
    /// One line for the inbox (`Payment completed: 12.34 EUR`).
    pub title: String,
    /// The payment as the event carried it.
    pub data: Value,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: i64,
    /// When its owner read it.
    pub read_at_ms: Option<i64>,
}

/// A page of notifications, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationPage {
    /// The notifications.
    pub items: Vec<Notification>,
    /// Pass as `after` for the next (older) page; `None` on the last page.
    pub next_after: Option<Uuid>,
}

/// A delivery with the latest attempts of its log, newest attempt last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryWithLog {
    /// The delivery.
    pub delivery: WebhookDelivery,
    /// Its latest attempts (at most [`MAX_LISTED_ATTEMPTS`]), oldest first.
    pub attempts: Vec<DeliveryAttempt>,
}

/// A page of an endpoint's deliveries, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPage {
    /// The deliveries.
    pub items: Vec<DeliveryWithLog>,
    /// Pass as `after` for the next (older) page; `None` on the last page.
    pub next_after: Option<Uuid>,
}

/// A delivery a deliverer holds for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    /// The delivery as claimed (`attempts` not yet counting this one).
    pub delivery: WebhookDelivery,
    /// Its endpoint (possibly disabled meanwhile).
    pub endpoint: WebhookEndpoint,
    /// The claim token: only its holder may record the attempt.
    pub claim: Uuid,
}

/// What an attempt leaves behind: its log line and the delivery's next state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// The log line.
    pub attempt: DeliveryAttempt,
    /// The delivery's status after it.
    pub status: DeliveryStatus,
    /// When the next attempt is due, if any.
    pub next_attempt_at_ms: Option<i64>,
}

/// How one attempt went, as the deliverer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// When it started, Unix milliseconds.
    pub at_ms: i64,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// The answer's status, if there was one.
    pub status_code: Option<u16>,
    /// Why there was no answer.
    pub error: Option<String>,
    /// The first bytes of the answer's body.
    pub response_prefix: Option<String>,
}

impl AttemptOutcome {
    /// Whether the endpoint took it: any 2xx.
    pub fn delivered(&self) -> bool {
        self.status_code.is_some_and(|code| (200..300).contains(&code))
    }
}

/// What [`NotificationStore::record_event`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventRecorded {
    /// Whether the notification is new (false: the event was seen before).
    pub notification_created: bool,
    /// Deliveries created (those of a redelivered event already exist).
    pub deliveries_created: usize,
    /// The status of the email row this call created (`pending`, or `skipped` for want of
    /// an address); `None`: no email, or recorded before.
    pub email_created: Option<DeliveryStatus>,
}

/// What one event means for its owner: written by [`NotificationStore::record_events`].
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// The in-app notification.
    pub notification: Notification,
    /// One per active endpoint subscribed to the event's type.
    pub deliveries: Vec<WebhookDelivery>,
    /// With SMTP configured.
    pub email: Option<EmailDelivery>,
}

/// What [`NotificationService::on_event`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Not a type notifications care about.
    Ignored,
    /// Recorded (or found recorded already).
    Recorded(EventRecorded),
}

/// What [`NotificationStore::replay`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// A new series starts now.
    Replayed(Box<WebhookDelivery>),
    /// The delivery is still pending: nothing to replay yet.
    InProgress,
    /// The delivery already had [`MAX_SERIES`] series.
    TooManyReplays,
    /// No such delivery.
    NotFound,
}

/// Where notifications, endpoints, deliveries and their log are kept.
#[async_trait]
pub trait NotificationStore: Send + Sync + std::fmt::Debug {
    /// Inserts `endpoint` unless its owner already has `max_active` active endpoints
    /// (checked in the same transaction); `false` when refused.
    async fn insert_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        max_active: usize,
    ) -> Result<bool, StoreError>;
    /// One endpoint.
    async fn endpoint(&self, id: Uuid) -> Result<Option<WebhookEndpoint>, StoreError>;
    /// An owner's endpoints, newest first, at most [`MAX_LISTED_ENDPOINTS`].
    async fn endpoints(&self, owner: &str) -> Result<Vec<WebhookEndpoint>, StoreError>;
    /// Disables an endpoint (idempotent) and cancels its pending deliveries.
    async fn disable_endpoint(&self, id: Uuid, now_ms: i64) -> Result<(), StoreError>;
    /// Inserts the notification and the deliveries of one event in one transaction;
    /// those already there (same owner and event, same endpoint and event) are skipped.
    async fn record_event(
        &self,
        notification: &Notification,
        deliveries: &[WebhookDelivery],
    ) -> Result<EventRecorded, StoreError> {
        self.record_event_with_email(notification, deliveries, None).await
    }
    /// [`NotificationStore::record_event`] plus the event's email, in the same transaction;
    /// an email already there (same owner and event) is skipped.
    async fn record_event_with_email(
        &self,
        notification: &Notification,
        deliveries: &[WebhookDelivery],
        email: Option<&EmailDelivery>,
    ) -> Result<EventRecorded, StoreError> {
        let record = EventRecord {
            notification: notification.clone(),
            deliveries: deliveries.to_vec(),
            email: email.cloned(),
        };
        let mut recorded = self.record_events(std::slice::from_ref(&record)).await?;
        recorded.pop().ok_or_else(|| StoreError::Corrupt("no outcome for the event".into()))
    }
    /// Records several events as [`NotificationStore::record_event_with_email`] would, all
    /// in one transaction (one commit instead of one per event); the outcomes in order. An
    /// event given twice is recorded once (the second finds it there).
    async fn record_events(&self, events: &[EventRecord])
    -> Result<Vec<EventRecorded>, StoreError>;
    /// The active endpoints of any of `owners`.
    async fn active_endpoints(&self, owners: &[&str]) -> Result<Vec<WebhookEndpoint>, StoreError>;
    /// The email of one event to `owner`, if one was recorded.
    async fn email_delivery(
        &self,
        owner: &str,
        event_id: &str,
    ) -> Result<Option<EmailDelivery>, StoreError>;
    /// Claims up to `max` pending emails due at `now_ms`, as [`NotificationStore::claim_due`].
    async fn claim_due_emails(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        max: u32,
    ) -> Result<Vec<ClaimedEmail>, StoreError>;
    /// Records attempt `attempt` of a claimed email and its next state, if `claim` still
    /// holds it; `false` when the claim was lost and nothing changed.
    async fn record_email_attempt(
        &self,
        claim: Uuid,
        email: &EmailDelivery,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// One notification.
    async fn notification(&self, id: Uuid) -> Result<Option<Notification>, StoreError>;
    /// An owner's notifications, newest first, with ids below `after`.
    async fn notifications(
        &self,
        owner: &str,
        unread_only: bool,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<NotificationPage, StoreError>;
    /// Marks a notification read at `now_ms` (a read one keeps its first time).
    async fn mark_read(&self, id: Uuid, now_ms: i64) -> Result<Option<Notification>, StoreError>;
    /// One delivery.
    async fn delivery(&self, id: Uuid) -> Result<Option<WebhookDelivery>, StoreError>;
    /// An endpoint's deliveries, newest first, with ids below `after`, each with its
    /// latest [`MAX_LISTED_ATTEMPTS`] attempts.
    async fn deliveries(
        &self,
        endpoint_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<DeliveryPage, StoreError>;
    /// Starts a new series of a delivery that is not pending: pending, due now, attempts 0.
    async fn replay(&self, id: Uuid, now_ms: i64) -> Result<ReplayOutcome, StoreError>;
    /// Claims up to `max` pending deliveries due at `now_ms` (PostgreSQL: rows locked with
    /// `SKIP LOCKED`, so replicas take different ones), pushing their due time to
    /// `lease_until_ms` so a crashed deliverer's claims come due again.
    async fn claim_due(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        max: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;
    /// Logs an attempt and moves the delivery on, if `claim` still holds it; `false` when
    /// the claim was lost (lease expired, endpoint deleted, replayed) and nothing changed.
    async fn record_attempt(
        &self,
        claim: Uuid,
        record: &AttemptRecord,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
}

/// What can go wrong with notifications.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    /// No such resource, or not the caller's.
    #[error("not found")]
    NotFound,
    /// The caller may not act for this owner.
    #[error("the caller may not act for this owner")]
    Forbidden,
    /// Authentication is off: the owner must be named.
    #[error("name the owner (authentication is off)")]
    OwnerRequired,
    /// The endpoint URL is refused.
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// The endpoint URL names a loopback, private or link-local host, and
    /// [`WebhookPolicy::allow_private`] is off.
    #[error("url not allowed: {0}; webhooks go to public addresses only")]
    PrivateUrl(String),
    /// The event types are refused.
    #[error("invalid event types: {0}")]
    InvalidEventTypes(String),
    /// The description is refused.
    #[error(
        "description must be at most {MAX_DESCRIPTION_CHARS} characters without control characters"
    )]
    InvalidDescription,
    /// The owner already has [`MAX_ENDPOINTS_PER_OWNER`] active endpoints.
    #[error("at most {MAX_ENDPOINTS_PER_OWNER} active webhook endpoints per owner")]
    TooManyEndpoints,
    /// The endpoint was deleted.
    #[error("the endpoint was deleted")]
    EndpointDisabled,
    /// The delivery is still being attempted.
    #[error("the delivery is still pending")]
    DeliveryInProgress,
    /// The delivery was replayed [`MAX_SERIES`] times.
    #[error("the delivery was replayed {MAX_SERIES} times already")]
    TooManyReplays,
    /// A page size out of range.
    #[error("limit must be 1 to {MAX_PAGE_LIMIT}")]
    InvalidLimit,
    /// An event whose data cannot be a payment: it never will be (poison).
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new endpoint, as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEndpoint {
    /// Whose it is; `None`: the caller's own (required when authentication is off).
    pub owner: Option<String>,
    /// Where to POST.
    pub url: String,
    /// Which event types; empty: all of [`EVENT_TYPES`].
    pub event_types: Vec<String>,
    /// Free text.
    pub description: Option<String>,
}

/// The notification use cases.
#[derive(Debug, Clone)]
pub struct NotificationService {
    store: Arc<dyn NotificationStore>,
    clock: Arc<dyn Clock>,
    policy: Arc<WebhookPolicy>,
    /// Where email addresses are found; `None`: no email (no SMTP server configured).
    directory: Option<Arc<dyn RecipientDirectory>>,
}

/// Whether `caller` may see what `owner` owns (`None`: authentication is off).
pub fn may_see(caller: Option<&Principal>, owner: &str) -> bool {
    caller.is_none_or(|p| {
        p.has_role(Role::BankingAdmin) || (p.has_role(Role::Customer) && p.subject == owner)
    })
}

/// The owner `caller` acts for: `requested` if it may, else its own subject.
fn owner_for(
    caller: Option<&Principal>,
    requested: Option<&str>,
) -> Result<String, NotificationError> {
    let owner = match (caller, requested) {
        (None, None) => return Err(NotificationError::OwnerRequired),
        (_, Some(owner)) => owner.to_owned(),
        (Some(principal), None) => principal.subject.clone(),
    };
    if owner.is_empty() || owner.len() > MAX_OWNER_BYTES || owner.chars().any(char::is_control) {
        return Err(NotificationError::Forbidden);
    }
    if may_see(caller, &owner) { Ok(owner) } else { Err(NotificationError::Forbidden) }
}

/// A fresh signing secret: `whsec_` + base64 of [`SECRET_BYTES`] random bytes.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", BASE64.encode(bytes))
}

/// The key bytes of a secret: the base64 after `whsec_` (Standard Webhooks).
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    BASE64.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()
}

/// Checks an endpoint URL: at most [`MAX_URL_BYTES`], `https` (or `http` when allowed),
/// a host, no credentials, no fragment, and (unless `allow_private`) no loopback, private
/// or link-local host ([`forbidden_host`]).
pub fn validate_url(
    url: &str,
    allow_http: bool,
    allow_private: bool,
) -> Result<(), NotificationError> {
    let invalid = |why: &str| Err(NotificationError::InvalidUrl(why.to_owned()));
    if url.is_empty() || url.len() > MAX_URL_BYTES {
        return invalid(&format!("must be 1 to {MAX_URL_BYTES} bytes"));
    }
    let Ok(parsed) = url::Url::parse(url) else {
        return invalid("not an absolute URL");
    };
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return invalid("only https:// endpoints are allowed"),
        _ => return invalid("the scheme must be https (or http)"),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return invalid("no host");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return invalid("credentials in the URL are not allowed");
    }
    if parsed.fragment().is_some() || url.contains('#') {
        return invalid("fragments are not allowed");
    }
    if !allow_private && let Some(why) = forbidden_host(&parsed) {
        return Err(NotificationError::PrivateUrl(why));
    }
    Ok(())
}

fn validate_event_types(types: &[String]) -> Result<Vec<String>, NotificationError> {
    if types.is_empty() {
        return Ok(EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect());
    }
    if types.len() > EVENT_TYPES.len() {
        return Err(NotificationError::InvalidEventTypes(format!(
            "at most {} types",
            EVENT_TYPES.len()
        )));
    }
    let mut chosen: Vec<String> = Vec::new();
    for type_ in types {
        if !EVENT_TYPES.contains(&type_.as_str()) {
            let shown: String = type_.chars().take(64).collect();
            return Err(NotificationError::InvalidEventTypes(format!(
                "unknown type {shown:?}; known: {}",
                EVENT_TYPES.join(", ")
            )));
        }
        if !chosen.contains(type_) {
            chosen.push(type_.clone());
        }
    }
    Ok(chosen)
}

fn page_limit(limit: Option<u32>) -> Result<u32, NotificationError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_LIMIT);
    if (1..=MAX_PAGE_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(NotificationError::InvalidLimit)
    }
}

/// The notification of one event (`None`: not a type notifications care about).
fn notification_of(event: &Event, now_ms: i64) -> Result<Option<Notification>, NotificationError> {
    if !EVENT_TYPES.contains(&event.type_.as_str()) {
        return Ok(None);
    }
    let data = &event.data;
    if !data.is_object() {
        return Err(NotificationError::InvalidEvent("data is not a JSON object".into()));
    }
    let owner = match data.get("owner").and_then(Value::as_str) {
        Some(owner)
            if !owner.is_empty()
                && owner.len() <= MAX_OWNER_BYTES
                && !owner.chars().any(char::is_control) =>
        {
            owner.to_owned()
        }
        _ => return Err(NotificationError::InvalidEvent("data.owner is missing".into())),
    };
    let payment_id = match data.get("payment_id") {
        Some(Value::String(id)) => Some(id.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    Ok(Some(Notification {
        id: Uuid::now_v7(),
        owner,
        event_id: event.id.clone(),
        event_type: event.type_.clone(),
        payment_id,
        title: title(&event.type_, data),
        data: data.clone(),
        created_at_ms: now_ms,
        read_at_ms: None,
    }))
}

/// The first delivery of `notification`'s event to `endpoint`, due now.
fn webhook_delivery(
    endpoint: &WebhookEndpoint,
    notification: &Notification,
    payload: &str,
) -> WebhookDelivery {
    let id = Uuid::now_v7();
    let now_ms = notification.created_at_ms;
    WebhookDelivery {
        id,
        endpoint_id: endpoint.id,
        owner: notification.owner.clone(),
        event_id: notification.event_id.clone(),
        event_type: notification.event_type.clone(),
        message_id: format!("msg_{}", id.simple()),
        payload: payload.to_owned(),
        status: DeliveryStatus::Pending,
        series: 1,
        attempts: 0,
        next_attempt_at_ms: Some(now_ms),
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        last_status_code: None,
        last_error: None,
    }
}

/// The email of `notification` to `address` (due now), or skipped with the reason there
/// is none.
fn email_delivery(notification: &Notification, address: Result<String, String>) -> EmailDelivery {
    let now_ms = notification.created_at_ms;
    let (recipient, status, next_attempt_at_ms, last_error) = match address {
        Ok(address) => (Some(address), DeliveryStatus::Pending, Some(now_ms), None),
        Err(why) => (None, DeliveryStatus::Skipped, None, Some(why)),
    };
    EmailDelivery {
        id: Uuid::now_v7(),
        owner: notification.owner.clone(),
        event_id: notification.event_id.clone(),
        event_type: notification.event_type.clone(),
        recipient,
        subject: notification.title.clone(),
        body: email_body(&notification.title, &notification.data),
        status,
        attempts: 0,
        next_attempt_at_ms,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        last_error,
    }
}

/// The one inbox line of a payment event.
fn title(event_type: &str, data: &Value) -> String {
    let label = match event_type {
        "transaction.created" => "Payment created",
        "transaction.completed" => "Payment completed",
        "transaction.failed" => "Payment failed",
        "transaction.cancelled" => "Payment cancelled",
        "payment.held_for_review" => "Payment held for review",
        "payment.rejected" => "Payment rejected",
        _ => "Payment update",
    };
    let amount = data.get("amount").and_then(Value::as_i64);
    let currency =
        data.get("currency").and_then(Value::as_str).and_then(|c| Currency::parse(c).ok());
    match (amount, currency) {
        (Some(minor), Some(currency)) => {
            format!("{label}: {} {}", format_minor(minor, currency.exponent()), currency.code())
        }
        _ => label.to_owned(),
    }
}

/// The plain-text body of a payment event's email: the title, then the payment's facts.
fn email_body(title: &str, data: &Value) -> String {
    let mut body = format!("{title}\n\n");
    let field = |name: &str| data.get(name).and_then(Value::as_str).map(str::to_owned);
    let facts = [
        ("Payment", field("payment_id")),
        ("Status", field("status")),
        ("Reference", field("reference")),
        (
            "Beneficiary",
            data.pointer("/beneficiary/name").and_then(Value::as_str).map(str::to_owned),
        ),
    ];
    for (label, value) in facts {
        if let Some(value) = value {
            let value: String = value.chars().filter(|c| !c.is_control()).take(200).collect();
            body.push_str(&format!("{label}: {value}\n"));
        }
    }
    body.push_str(
        "\nThe details are in your ferrobank inbox. This message was sent automatically.\n",
    );
    body
}

/// `1234` minor units with exponent 2 as `12.34`; integers only.
fn format_minor(minor: i64, exponent: u16) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let magnitude = minor.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{magnitude}");
    }
    let scale = 10u64.saturating_pow(u32::from(exponent));
    let width = usize::from(exponent);
    format!("{sign}{}.{:0width$}", magnitude / scale, magnitude % scale)
}

impl NotificationService {
    /// The service over `store`; refuses a policy out of bounds.
    pub fn new(
        store: Arc<dyn NotificationStore>,
        clock: Arc<dyn Clock>,
        policy: WebhookPolicy,
    ) -> Result<Self, String> {
        policy.validate()?;
        Ok(Self { store, clock, policy: Arc::new(policy), directory: None })
    }

    /// The same service, also recording an email per event to the owner's address found in
    /// `directory` (only when an SMTP server is configured to send them).
    pub fn with_email(mut self, directory: Arc<dyn RecipientDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Whether events are emailed.
    pub fn email_enabled(&self) -> bool {
        self.directory.is_some()
    }

    /// The delivery policy.
    pub fn policy(&self) -> &WebhookPolicy {
        &self.policy
    }

    /// Records what one bus event means for its owner: one notification and one delivery
    /// per active endpoint subscribed to its type, in one transaction. Idempotent by the
    /// event id. Types other than [`EVENT_TYPES`] are ignored; data without an `owner`
    /// is [`NotificationError::InvalidEvent`].
    pub async fn on_event(&self, event: &Event) -> Result<EventOutcome, NotificationError> {
        let mut outcomes = self.on_events(&[event]).await?;
        outcomes.pop().unwrap_or(Ok(EventOutcome::Ignored))
    }

    /// [`NotificationService::on_event`] for several events, recorded in one transaction:
    /// the outcome of each, in order. An unreadable event fails alone; the outer error is
    /// the store's, and then nothing of the batch was recorded.
    pub async fn on_events(
        &self,
        events: &[&Event],
    ) -> Result<Vec<Result<EventOutcome, NotificationError>>, NotificationError> {
        let now_ms = self.clock.now_ms();
        let read: Vec<Result<Option<Notification>, NotificationError>> =
            events.iter().map(|event| notification_of(event, now_ms)).collect();
        let mut owners: Vec<&str> =
            read.iter().flatten().flatten().map(|n| n.owner.as_str()).collect();
        owners.sort_unstable();
        owners.dedup();
        let endpoints = match owners.is_empty() {
            true => Vec::new(),
            false => self.store.active_endpoints(&owners).await?,
        };
        let mut emails = HashMap::new();
        if let Some(directory) = &self.directory {
            for owner in &owners {
                emails.insert(*owner, directory.email_of(owner).await?);
            }
        }
        let mut records = Vec::new();
        for (event, notification) in events.iter().zip(&read) {
            let Ok(Some(notification)) = notification else { continue };
            let payload =
                json!({ "type": event.type_, "timestamp": event.time, "data": event.data });
            let payload = serde_json::to_string(&payload)
                .map_err(|e| NotificationError::InvalidEvent(e.to_string()))?;
            let deliveries = endpoints
                .iter()
                .filter(|e| e.owner == notification.owner && e.receives(&event.type_))
                .map(|endpoint| webhook_delivery(endpoint, notification, &payload))
                .collect();
            let email = emails
                .get(notification.owner.as_str())
                .map(|address| email_delivery(notification, address.clone()));
            records.push(EventRecord { notification: notification.clone(), deliveries, email });
        }
        let mut recorded = match records.is_empty() {
            true => Vec::new(),
            false => self.store.record_events(&records).await?,
        }
        .into_iter();
        Ok(read
            .into_iter()
            .map(|read| match read {
                Ok(Some(_)) => Ok(EventOutcome::Recorded(recorded.next().unwrap_or_default())),
                Ok(None) => Ok(EventOutcome::Ignored),
                Err(error) => Err(error),
            })
            .collect())
    }

    /// Registers an endpoint; returns it and its secret (shown to the caller only now).
    pub async fn register(
        &self,
        caller: Option<&Principal>,
        new: NewEndpoint,
    ) -> Result<(WebhookEndpoint, String), NotificationError> {
        let owner = owner_for(caller, new.owner.as_deref())?;
        validate_url(&new.url, self.policy.allow_http, self.policy.allow_private)?;
        let event_types = validate_event_types(&new.event_types)?;
        let description = new.description.filter(|d| !d.is_empty());
        if description.as_ref().is_some_and(|d| {
            d.chars().count() > MAX_DESCRIPTION_CHARS || d.chars().any(char::is_control)
        }) {
            return Err(NotificationError::InvalidDescription);
        }
        let secret = generate_secret();
        let endpoint = WebhookEndpoint {
            id: Uuid::now_v7(),
            owner,
            url: new.url,
            event_types,
            description,
            secret: secret.clone(),
            created_at_ms: self.clock.now_ms(),
            disabled_at_ms: None,
        };
        if !self.store.insert_endpoint(&endpoint, MAX_ENDPOINTS_PER_OWNER).await? {
            return Err(NotificationError::TooManyEndpoints);
        }
        Ok((endpoint, secret))
    }

    /// The endpoints of `owner` (`None`: the caller's own), newest first.
    pub async fn endpoints(
        &self,
        caller: Option<&Principal>,
        owner: Option<&str>,
    ) -> Result<Vec<WebhookEndpoint>, NotificationError> {
        let owner = owner_for(caller, owner)?;
        Ok(self.store.endpoints(&owner).await?)
    }

    /// One endpoint the caller may see.
    pub async fn endpoint(
        &self,
        caller: Option<&Principal>,
        id: Uuid,
    ) -> Result<WebhookEndpoint, NotificationError> {
        self.store
            .endpoint(id)
            .await?
            .filter(|endpoint| may_see(caller, &endpoint.owner))
            .ok_or(NotificationError::NotFound)
    }

    /// Deletes (disables) an endpoint the caller may see; its pending deliveries are
    /// cancelled. Deleting it again changes nothing.
    pub async fn delete_endpoint(
        &self,
        caller: Option<&Principal>,
        id: Uuid,
    ) -> Result<(), NotificationError> {
        let endpoint = self.endpoint(caller, id).await?;
        if endpoint.active() {
            self.store.disable_endpoint(id, self.clock.now_ms()).await?;
        }
        Ok(())
    }

    /// An endpoint's deliveries, newest first, each with its latest attempts.
    pub async fn deliveries(
        &self,
        caller: Option<&Principal>,
        endpoint_id: Uuid,
        after: Option<Uuid>,
        limit: Option<u32>,
    ) -> Result<DeliveryPage, NotificationError> {
        let limit = page_limit(limit)?;
        self.endpoint(caller, endpoint_id).await?;
        Ok(self.store.deliveries(endpoint_id, after, limit).await?)
    }

    /// Sends a delivery again as a new series of attempts, with the same `webhook-id`
    /// and body (a fresh timestamp and signature per attempt).
    pub async fn replay(
        &self,
        caller: Option<&Principal>,
        endpoint_id: Uuid,
        delivery_id: Uuid,
    ) -> Result<WebhookDelivery, NotificationError> {
        let endpoint = self.endpoint(caller, endpoint_id).await?;
        let delivery = self.store.delivery(delivery_id).await?;
        if delivery.is_none_or(|d| d.endpoint_id != endpoint_id) {
            return Err(NotificationError::NotFound);
        }
        if !endpoint.active() {
            return Err(NotificationError::EndpointDisabled);
        }
        match self.store.replay(delivery_id, self.clock.now_ms()).await? {
            ReplayOutcome::Replayed(delivery) => Ok(*delivery),
            ReplayOutcome::InProgress => Err(NotificationError::DeliveryInProgress),
            ReplayOutcome::TooManyReplays => Err(NotificationError::TooManyReplays),
            ReplayOutcome::NotFound => Err(NotificationError::NotFound),
        }
    }

    /// The notifications of `owner` (`None`: the caller's own), newest first.
    pub async fn notifications(
        &self,
        caller: Option<&Principal>,
        owner: Option<&str>,
        unread_only: bool,
        after: Option<Uuid>,
        limit: Option<u32>,
    ) -> Result<NotificationPage, NotificationError> {
        let limit = page_limit(limit)?;
        let owner = owner_for(caller, owner)?;
        Ok(self.store.notifications(&owner, unread_only, after, limit).await?)
    }

    /// Marks a notification the caller may see as read; returns it.
    pub async fn mark_read(
        &self,
        caller: Option<&Principal>,
        id: Uuid,
    ) -> Result<Notification, NotificationError> {
        let visible = self.store.notification(id).await?.is_some_and(|n| may_see(caller, &n.owner));
        if !visible {
            return Err(NotificationError::NotFound);
        }
        self.store.mark_read(id, self.clock.now_ms()).await?.ok_or(NotificationError::NotFound)
    }

    /// Claims up to `max` due deliveries for one attempt each.
    pub async fn claim_due(&self, max: u32) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let now_ms = self.clock.now_ms();
        let lease_ms = i64::try_from(self.policy.lease_ms()).unwrap_or(i64::MAX);
        self.store.claim_due(now_ms, now_ms.saturating_add(lease_ms), max).await
    }

    /// Logs one attempt of a claimed delivery and schedules what follows by the policy:
    /// delivered on 2xx, else the next attempt after the backoff, or `failed` after the
    /// last. Returns the new status, or `None` when the claim was lost.
    pub async fn record_attempt(
        &self,
        claimed: &ClaimedDelivery,
        outcome: AttemptOutcome,
    ) -> Result<Option<DeliveryStatus>, StoreError> {
        let attempt = claimed.delivery.attempts.saturating_add(1);
        let now_ms = self.clock.now_ms();
        let (status, next_attempt_at_ms) = self.policy.after_attempt(
            attempt,
            outcome.delivered(),
            claimed.endpoint.active(),
            now_ms,
        );
        let record = AttemptRecord {
            attempt: DeliveryAttempt {
                delivery_id: claimed.delivery.id,
                series: claimed.delivery.series,
                attempt,
                at_ms: outcome.at_ms,
                duration_ms: outcome.duration_ms,
                status_code: outcome.status_code,
                error: outcome.error,
                response_prefix: outcome.response_prefix,
            },
            status,
            next_attempt_at_ms,
        };
        let recorded = self.store.record_attempt(claimed.claim, &record, now_ms).await?;
        Ok(recorded.then_some(status))
    }

    /// Claims up to `max` due emails for one attempt each.
    pub async fn claim_due_emails(&self, max: u32) -> Result<Vec<ClaimedEmail>, StoreError> {
        let now_ms = self.clock.now_ms();
        let lease_ms = i64::try_from(self.policy.lease_ms()).unwrap_or(i64::MAX);
        self.store.claim_due_emails(now_ms, now_ms.saturating_add(lease_ms), max).await
    }

    /// Records one attempt of a claimed email and schedules what follows by the policy
    /// (permanent failures are not retried). Returns the new status, or `None` when the
    /// claim was lost.
    pub async fn record_email_attempt(
        &self,
        claimed: &ClaimedEmail,
        outcome: EmailOutcome,
    ) -> Result<Option<DeliveryStatus>, StoreError> {
        let attempt = claimed.email.attempts.saturating_add(1);
        let now_ms = self.clock.now_ms();
        let (sent, retryable, error) = match outcome {
            EmailOutcome::Sent => (true, true, None),
            EmailOutcome::Failed { error, permanent } => (false, !permanent, Some(error)),
        };
        let (status, next_attempt_at_ms) =
            self.policy.after_attempt(attempt, sent, retryable, now_ms);
        let email = EmailDelivery {
            status,
            attempts: attempt,
            next_attempt_at_ms,
            updated_at_ms: now_ms,
            last_error: error,
            ..claimed.email.clone()
        };
        let recorded = self.store.record_email_attempt(claimed.claim, &email, now_ms).await?;
        Ok(recorded.then_some(status))
    }

    /// The email of one event to `owner`, if one was recorded.
    pub async fn email_delivery(
        &self,
        owner: &str,
        event_id: &str,
    ) -> Result<Option<EmailDelivery>, StoreError> {
        self.store.email_delivery(owner, event_id).await
    }

    /// The current time of the service's clock, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn principal(subject: &str, roles: &[Role]) -> Principal {
        Principal {
            subject: subject.into(),
            username: None,
            roles: roles.iter().copied().collect(),
            client_id: None,
            scopes: Default::default(),
            issuer: "https://idp.example/realms/ferrobank".into(),
            tier: None,
        }
    }

    #[test]
    fn urls_are_https_or_allowed_http_without_credentials_or_fragments() {
        assert!(validate_url("https://hooks.example.com/in?x=1", false, false).is_ok());
        assert!(validate_url("http://127.0.0.1:9000/hook", true, true).is_ok());
        for bad in [
            "http://hooks.example.com/in",
            "ftp://hooks.example.com/in",
            "https://user:pw@hooks.example.com/in",
            "https://user@hooks.example.com/in",
            "https://hooks.example.com/in#frag",
            "https://hooks.example.com/in#",
            "/relative",
            "",
        ] {
            assert!(validate_url(bad, false, true).is_err(), "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(validate_url(&long, true, true).is_err());
    }

    #[test]
    fn private_hosts_are_refused_unless_allowed() {
        for private in [
            "http://127.0.0.1:9000/hook",
            "http://127.1.2.3/hook",
            "https://10.0.0.8/hook",
            "https://172.16.4.1/hook",
            "https://192.168.1.1/hook",
            "http://169.254.169.254/latest/meta-data/",
            "https://0.0.0.0/hook",
            "https://100.64.0.1/hook",
            "https://[::1]/hook",
            "https://[::]/hook",
            "https://[fd00::1]/hook",
            "https://[fe80::1]/hook",
            "https://[::ffff:127.0.0.1]/hook",
            "https://localhost/hook",
            "https://LocalHost./hook",
            "https://api.localhost/hook",
        ] {
            assert!(
                matches!(validate_url(private, true, false), Err(NotificationError::PrivateUrl(_))),
                "{private}"
            );
            assert!(validate_url(private, true, true).is_ok(), "{private}");
        }
        for public in [
            "https://hooks.example.com/in",
            "https://93.184.216.34/in",
            "https://[2606:4700::1111]/in",
            "https://172.32.0.1/in",
            "https://localhost.example.com/in",
        ] {
            assert!(validate_url(public, false, false).is_ok(), "{public}");
        }
    }

    #[test]
    fn one_schedule_for_every_channel() {
        let policy = WebhookPolicy { backoff_ms: vec![10], max_attempts: 3, ..Default::default() };
        assert_eq!(policy.after_attempt(1, true, true, 0), (DeliveryStatus::Delivered, None));
        assert_eq!(policy.after_attempt(1, false, true, 5), (DeliveryStatus::Pending, Some(15)));
        assert_eq!(policy.after_attempt(1, false, false, 5), (DeliveryStatus::Failed, None));
        assert_eq!(policy.after_attempt(3, false, true, 5), (DeliveryStatus::Failed, None));
    }

    #[test]
    fn email_bodies_carry_the_title_and_the_payments_facts() {
        let data = json!({"payment_id": "p-1", "status": "completed", "reference": "rent\r\nBcc: x",
                          "beneficiary": {"name": "Erika"}, "amount": 2500, "currency": "EUR"});
        let body = email_body(&title("transaction.completed", &data), &data);
        assert!(body.starts_with("Payment completed: 25.00 EUR\n\n"), "{body}");
        assert!(body.contains("Payment: p-1\n") && body.contains("Beneficiary: Erika\n"), "{body}");
        assert!(body.contains("Reference: rentBcc: x\n"), "control characters dropped: {body}");
    }

    #[test]
    fn secrets_are_whsec_and_24_random_bytes() {
        let secret = generate_secret();
        assert!(secret.starts_with(SECRET_PREFIX));
        assert_eq!(secret_key(&secret).unwrap().len(), SECRET_BYTES);
        assert_ne!(secret, generate_secret());
    }

    #[test]
    fn owners_see_their_own_and_the_admin_everything() {
        let alice = principal("alice", &[Role::Customer]);
        let admin = principal("root", &[Role::BankingAdmin]);
        let analyst = principal("carol", &[Role::RiskAnalyst]);
        assert!(may_see(Some(&alice), "alice"));
        assert!(!may_see(Some(&alice), "bob"));
        assert!(may_see(Some(&admin), "bob"));
        assert!(!may_see(Some(&analyst), "carol"));
        assert!(may_see(None, "bob"));
        assert_eq!(owner_for(Some(&alice), None).unwrap(), "alice");
        assert!(matches!(owner_for(Some(&alice), Some("bob")), Err(NotificationError::Forbidden)));
        assert_eq!(owner_for(Some(&admin), Some("bob")).unwrap(), "bob");
        assert!(matches!(owner_for(None, None), Err(NotificationError::OwnerRequired)));
    }

    #[test]
    fn backoff_follows_the_schedule_and_repeats_the_last() {
        let policy = WebhookPolicy { backoff_ms: vec![10, 20], ..WebhookPolicy::default() };
        assert_eq!(
            (1..=4).map(|a| policy.backoff_after_ms(a)).collect::<Vec<_>>(),
            [10, 20, 20, 20]
        );
        assert!(WebhookPolicy { max_attempts: 0, ..policy.clone() }.validate().is_err());
        assert!(WebhookPolicy { backoff_ms: vec![], ..policy.clone() }.validate().is_err());
        assert!(WebhookPolicy::default().validate().is_ok());
    }

    #[test]
    fn titles_name_the_amount_in_major_units() {
        let data = json!({"amount": 1234, "currency": "EUR"});
        assert_eq!(title("transaction.completed", &data), "Payment completed: 12.34 EUR");
        let data = json!({"amount": 5, "currency": "JPY"});
        assert_eq!(title("payment.rejected", &data), "Payment rejected: 5 JPY");
        assert_eq!(title("transaction.failed", &json!({})), "Payment failed");
        assert_eq!(format_minor(-1_005, 2), "-10.05");
    }

    #[test]
    fn event_types_default_to_all_and_refuse_unknown_ones() {
        assert_eq!(validate_event_types(&[]).unwrap().len(), EVENT_TYPES.len());
        let twice = vec!["payment.rejected".to_owned(), "payment.rejected".to_owned()];
        assert_eq!(validate_event_types(&twice).unwrap(), ["payment.rejected"]);
        assert!(validate_event_types(&["account.opened".to_owned()]).is_err());
    }
}
