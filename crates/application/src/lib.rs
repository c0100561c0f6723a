//! Use cases of the ledger service and the ports they need.
//!
//! Each use case takes its ports (store, clock) from [`LedgerService`]; a state change and
//! the outbox event announcing it are committed in one transaction. Transfers go through
//! a bounded queue and are committed in batches by one writer task (group commit).
//! `rate_limit` is the port of the edge's per-route, per-client token buckets; `bus` the
//! event bus (CloudEvents published with confirmation, consumed at least once).

pub mod access;
pub mod activity;
pub mod audit;
pub mod audit_consumer;
pub mod audit_sink;
pub mod bus;
pub mod clock;
pub mod idempotency;
pub mod ledger;
pub mod notifications;
pub mod outbox;
pub mod payments;
pub mod ports;
pub mod psp;
pub mod rate_limit;
pub mod relay;
pub mod velocity;
pub mod worker;

pub use activity::{
    ActivityCursor, ActivityEntry, ActivityLog, ActivityPage, ActivityQuery, MAX_ACTIVITY_PAGE,
};
pub use audit::{AuditLog, AuditPage, AuditQuery, MAX_AUDIT_PAGE, verify_log};
pub use audit_consumer::{AUDIT_CONSUMER, AUDITED_EVENT_TYPES, AuditConsumer, ConsumeError};
pub use audit_sink::{AccessDenied, AuditSink};
pub use bus::{BusError, DeadLetter, Delivery, Event, EventBus, RetryPolicy, Subscription};
pub use clock::{Clock, SystemClock};
pub use idempotency::{IdempotencyStore, KeyClaim};
pub use ledger::{LedgerError, LedgerLimits, LedgerService, OpenOutcome};
pub use notifications::{
    NotificationError, NotificationService, NotificationStore, WebhookEndpoint, WebhookPolicy,
};
pub use ports::{
    HistoryEntry, HistoryPage, LedgerStore, LedgerTx, StoreError, VerifyMismatch, VerifyReport,
};
pub use psp::{ChargeOutcome, ChargeRequest, PaymentGateway, PspError};
pub use rate_limit::{RateDecision, RateLimitError, RateLimiter, TokenBucket};
pub use velocity::{VelocityBefore, VelocityStore};
