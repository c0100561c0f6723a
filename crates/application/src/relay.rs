//! The outbox relay: publishes what the transactions committed to the outbox, in order per
//! subject (account), and marks rows sent only after the bus confirmed them.
//!
//! Several relays may run (one per replica): a relay publishes only while it holds the
//! outbox claim (a transaction-scoped advisory lock on PostgreSQL, see the adapter), so
//! two relays never publish the same rows at once or out of order. Row-level `SKIP LOCKED`
//! would let a second relay publish a later event of the same account before the first
//! relay's earlier one, which is why the claim covers the whole outbox. Publishing is
//! at-least-once: a crash between the bus's confirmation and the mark publishes a row
//! again, and consumers de-duplicate by event id.
//!
//! The relay sleeps until a transaction that wrote the outbox commits (in-process signal,
//! PostgreSQL `LISTEN`/`NOTIFY` across processes), with a slow poll as a safety net.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::bus::{Event, EventBus, rfc3339_from_unix_ms};
use crate::clock::Clock;
use crate::payments::{OutboxRow, OutboxStore};

/// Settings of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayOptions {
    /// Most rows claimed (and published) per round.
    pub batch: u32,
    /// Longest sleep without a signal before looking again.
    pub idle_poll_ms: u64,
    /// First pause after the bus or the database failed; doubles up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    /// Longest pause after failures.
    pub max_backoff_ms: u64,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self { batch: 500, idle_poll_ms: 1000, initial_backoff_ms: 100, max_backoff_ms: 5000 }
    }
}

/// The CloudEvents `source` of events from this service.
pub const EVENT_SOURCE: &str = "/ferrobank";

/// Publishes outbox rows to the bus until the task is aborted.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    store: Arc<dyn OutboxStore>,
    bus: Arc<dyn EventBus>,
    clock: Arc<dyn Clock>,
    options: RelayOptions,
}

impl OutboxRelay {
    /// A relay of `store`'s outbox to `bus`.
    pub fn new(
        store: Arc<dyn OutboxStore>,
        bus: Arc<dyn EventBus>,
        clock: Arc<dyn Clock>,
        options: RelayOptions,
    ) -> Self {
        Self { store, bus, clock, options }
    }

    /// Runs forever (abort the task to stop).
    pub async fn run(self) {
        let mut backoff = self.options.initial_backoff_ms;
        loop {
            match self.round().await {
                Ok(published) => {
                    backoff = self.options.initial_backoff_ms;
                    if published == 0 {
                        self.store.outbox_changed(self.options.idle_poll_ms).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, backoff_ms = backoff, "outbox relay: will retry");
                    metrics::counter!("ferrobank_outbox_relay_failures_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                    backoff = (backoff * 2).min(self.options.max_backoff_ms);
                }
            }
        }
    }

    /// One claim: publishes what it got, marks what the bus confirmed. Returns how many
    /// rows were published; an error when some could not be (they stay for next time).
    pub async fn round(&self) -> Result<usize, String> {
        let Some(claim) =
            self.store.claim_outbox(self.options.batch).await.map_err(|e| e.to_string())?
        else {
            return Ok(0);
        };
        if claim.rows().is_empty() {
            claim.finish(&[], self.clock.now_ms()).await.map_err(|e| e.to_string())?;
            return Ok(0);
        }
        // Per subject in order: a subject stops at its first failure (an unreadable row
        // or an event the bus did not confirm), so nothing of it is published out of order.
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut failure = None;
        let mut events = Vec::with_capacity(claim.rows().len());
        let mut sent_rows = Vec::with_capacity(claim.rows().len());
        for row in claim.rows() {
            let subject = row.subject.as_deref().unwrap_or("");
            if blocked.contains(subject) {
                continue;
            }
            match event_of(row) {
                Ok(event) => {
                    events.push(event);
                    sent_rows.push((row.seq, subject));
                }
                Err(error) => {
                    blocked.insert(subject);
                    failure = failure.or(Some(error));
                }
            }
        }
        let mut published = Vec::with_capacity(events.len());
        for ((seq, subject), result) in
            sent_rows.into_iter().zip(self.bus.publish_all(&events).await)
        {
            match result {
                Ok(()) if !blocked.contains(subject) => published.push(seq),
                Ok(()) => {}
                Err(error) => {
                    blocked.insert(subject);
                    failure = failure.or(Some(error.to_string()));
                }
            }
        }
        let now_ms = self.clock.now_ms();
        let count = published.len();
        claim.finish(&published, now_ms).await.map_err(|e| e.to_string())?;
        metrics::counter!("ferrobank_outbox_published_total").increment(count as u64);
        match failure {
            Some(error) => Err(format!("publishing: {error} ({count} published)")),
            None => Ok(count),
        }
    }
}

/// The CloudEvent of an outbox row.
pub fn event_of(row: &OutboxRow) -> Result<Event, String> {
    let data: Value = serde_json::from_str(&row.payload)
        .map_err(|e| format!("outbox row {} is not JSON: {e}", row.seq))?;
    let id = uuid::Uuid::parse_str(&row.event_id)
        .map_err(|e| format!("outbox row {} has no UUID event id: {e}", row.seq))?;
    let subject = row.subject.clone().unwrap_or_else(|| "ledger".to_owned());
    let mut event = Event::new(
        id,
        EVENT_SOURCE,
        row.kind.clone(),
        subject,
        rfc3339_from_unix_ms(row.created_at_ms),
        data,
    );
    if let Some(traceparent) = &row.traceparent {
        event = event.with_traceparent(traceparent.clone());
    }
    Ok(event)
}
