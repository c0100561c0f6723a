//! Denied access into the audit trail without slowing the request down: the HTTP layer and
//! the edge hand an [`AccessDenied`] to an [`AuditSink`] (a bounded channel, never
//! awaited), and one task appends them. When the channel is full the record is dropped
//! and counted in `ferrobank_audit_dropped_total`: under a flood of refused requests the
//! service stays up and the gap is visible, rather than every request waiting on the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferrobank_domain::audit::{
    AuditAction, AuditActor, AuditOutcome, MAX_NAME_BYTES, NewAuditEntry,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::audit::AuditLog;
use crate::clock::Clock;

/// The action of every denied-access record.
pub const ACCESS_DENIED: &str = "access.denied";
/// Default capacity of the channel, in records.
pub const DEFAULT_DENIED_QUEUE: usize = 4_096;
/// Attempts of one append before the record is given up (logged, counted).
const MAX_APPEND_ATTEMPTS: u32 = 5;
/// Wait before the second attempt, doubled for each further one, in milliseconds.
const RETRY_BACKOFF_MS: u64 = 50;

/// One refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDenied {
    /// The token's subject when a valid token was presented; `None`: anonymous.
    pub subject: Option<String>,
    /// The HTTP method.
    pub method: String,
    /// The path as judged (normalized, no query).
    pub path: String,
    /// 401 or 403.
    pub status: u16,
    /// Why (`unauthorized`, `invalid_token`, `forbidden`, `RBAC: access denied`, ...).
    pub reason: String,
    /// The request id.
    pub request_id: Option<String>,
    /// Who refused: `api` (the service) or `edge` (the gateway).
    pub layer: &'static str,
}

impl AccessDenied {
    /// The audit entry: action `access.denied`, outcome `denied`, actor the subject or
    /// anonymous, resource `METHOD /path` (cut to the bound), details status, reason,
    /// request id and layer.
    pub fn entry(&self, id: Uuid, at_ms: i64) -> Option<NewAuditEntry> {
        let actor = match &self.subject {
            Some(subject) => AuditActor::subject(subject.as_str()).ok()?,
            None => AuditActor::Anonymous,
        };
        let mut resource = format!("{} {}", self.method, self.path);
        if resource.len() > MAX_NAME_BYTES {
            let mut cut = MAX_NAME_BYTES;
            while !resource.is_char_boundary(cut) {
                cut -= 1;
            }
            resource.truncate(cut);
        }
        let reason: String = self.reason.chars().take(200).collect();
        let details = json!({
            "status": self.status,
            "reason": reason,
            "request_id": self.request_id,
            "layer": self.layer,
        });
        let action = AuditAction::parse(ACCESS_DENIED).ok()?;
        NewAuditEntry::new(id, at_ms, actor, action, resource, AuditOutcome::Denied, details).ok()
    }
}

/// Where the HTTP layer drops denied-access records. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct AuditSink {
    sender: mpsc::Sender<NewAuditEntry>,
    clock: Arc<dyn Clock>,
    dropped: Arc<AtomicU64>,
}

impl AuditSink {
    /// A sink of `capacity` records (at least 1) and the task appending them to `log`;
    /// the task ends when every clone of the sink is dropped and the channel is drained.
    pub fn start(
        log: Arc<dyn AuditLog>,
        clock: Arc<dyn Clock>,
        capacity: usize,
    ) -> (AuditSink, JoinHandle<()>) {
        let (sender, mut receiver) = mpsc::channel::<NewAuditEntry>(capacity.max(1));
        let drain = tokio::spawn(async move {
            while let Some(entry) = receiver.recv().await {
                append_with_retries(&*log, entry).await;
            }
        });
        (AuditSink { sender, clock, dropped: Arc::default() }, drain)
    }

    /// Queues the record of a refused request; drops it (and counts it) when the queue is
    /// full or the appending task is gone. Returns whether it was queued.
    pub fn denied(&self, denied: &AccessDenied) -> bool {
        let Some(entry) = denied.entry(Uuid::now_v7(), self.clock.now_ms()) else {
            tracing::warn!(?denied, "audit: a denied request could not be recorded");
            return false;
        };
        match self.sender.try_send(entry) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ferrobank_audit_dropped_total").increment(1);
                false
            }
        }
    }

    /// Records dropped by this sink (and its clones) so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn append_with_retries(log: &dyn AuditLog, entry: NewAuditEntry) {
    let mut backoff_ms = RETRY_BACKOFF_MS;
    for attempt in 1..=MAX_APPEND_ATTEMPTS {
        // The same id on every attempt: an append that committed but did not answer is
        // found, not doubled.
        match log.append(entry.clone()).await {
            Ok(_) => return,
            Err(error) if attempt < MAX_APPEND_ATTEMPTS => {
                tracing::warn!(%error, attempt, "audit: appending a denied request failed; retrying");
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms *= 2;
            }
            Err(error) => {
                tracing::error!(%error, id = %entry.id, "audit: a denied request was NOT recorded");
                metrics::counter!("ferrobank_audit_dropped_total").increment(1);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::{AuditPage, AuditQuery};
    use crate::clock::SystemClock;
    use crate::ports::StoreError;
    use async_trait::async_trait;
    use ferrobank_domain::audit::{AuditRecord, ChainHead};
    use std::sync::Mutex;
    use tokio::sync::Semaphore;

    /// A log whose appends wait for a permit, so the channel fills up.
    #[derive(Debug)]
    struct SlowLog {
        gate: Arc<Semaphore>,
        records: Mutex<Vec<AuditRecord>>,
    }

    #[async_trait]
    impl AuditLog for SlowLog {
        async fn append_all(
            &self,
            entries: Vec<NewAuditEntry>,
        ) -> Result<Vec<AuditRecord>, StoreError> {
            self.gate.acquire().await.unwrap().forget();
            let mut records = self.records.lock().unwrap();
            let head = records.last().map_or(ChainHead::GENESIS, ChainHead::of);
            let (all, new) = head.link_all(entries, records.clone());
            records.extend(new);
            Ok(all)
        }
        async fn read(&self, _: u64, _: u32) -> Result<Vec<AuditRecord>, StoreError> {
            Ok(Vec::new())
        }
        async fn query(&self, _: &AuditQuery) -> Result<AuditPage, StoreError> {
            Ok(AuditPage { records: Vec::new(), next_after: None })
        }
    }

    fn denied(subject: Option<&str>) -> AccessDenied {
        AccessDenied {
            subject: subject.map(str::to_owned),
            method: "GET".into(),
            path: "/api/audit".into(),
            status: 403,
            reason: "forbidden".into(),
            request_id: Some("r-1".into()),
            layer: "api",
        }
    }

    #[test]
    fn a_denied_request_is_an_access_denied_record() {
        let entry = denied(Some("bob")).entry(Uuid::nil(), 7).unwrap();
        assert_eq!(entry.action.as_str(), "access.denied");
        assert_eq!(entry.outcome, AuditOutcome::Denied);
        assert_eq!(entry.actor, AuditActor::subject("bob").unwrap());
        assert_eq!(entry.resource, "GET /api/audit");
        assert_eq!(entry.details["status"], 403);
        let anonymous = denied(None).entry(Uuid::nil(), 7).unwrap();
        assert_eq!(anonymous.actor, AuditActor::Anonymous);
        let long = AccessDenied { path: format!("/{}", "é".repeat(300)), ..denied(None) };
        assert!(long.entry(Uuid::nil(), 7).unwrap().resource.len() <= MAX_NAME_BYTES);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let log =
            Arc::new(SlowLog { gate: Arc::new(Semaphore::new(0)), records: Mutex::default() });
        let (sink, _drain) = AuditSink::start(log.clone(), Arc::new(SystemClock), 2);
        // The task takes one record and waits on the gate; two more fill the queue.
        let mut queued = 0_u64;
        for _ in 0..10 {
            if sink.denied(&denied(Some("bob"))) {
                queued += 1;
            }
            tokio::task::yield_now().await;
        }
        assert!(sink.dropped() >= 7, "dropped {}", sink.dropped());
        assert_eq!(queued + sink.dropped(), 10);
        log.gate.add_permits(100);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while (log.records.lock().unwrap().len() as u64) < queued {
            assert!(tokio::time::Instant::now() < deadline, "queued records were not appended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
