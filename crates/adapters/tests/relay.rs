//! The outbox relay against the real stores: every committed event reaches the bus, in
//! order per subject, once, also with several relays sharing one PostgreSQL outbox; and a
//! commit wakes the relay without polling.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferrobank_adapters::bus::{MemoryBus, MemoryBusOptions};
use ferrobank_adapters::testing::TestDatabase;
use ferrobank_adapters::{Backend, SqlStore};
use ferrobank_application::outbox::OutboxMessage;
use ferrobank_application::payments::OutboxStore;
use ferrobank_application::relay::{OutboxRelay, RelayOptions};
use ferrobank_application::{EventBus, LedgerStore, SystemClock};
use serde_json::json;
use uuid::Uuid;

const SUBJECTS: [&str; 3] = ["acct-a", "acct-b", "acct-c"];

/// Commits `count` events, `per_tx` per transaction, round-robin over the subjects; each
/// carries its subject's sequence number `n`.
async fn commit_events(
    store: &SqlStore,
    count: usize,
    per_tx: usize,
    next: &mut HashMap<String, u64>,
) {
    let mut written = 0;
    while written < count {
        let mut tx = store.begin().await.unwrap();
        let mut messages = Vec::new();
        for i in written..(written + per_tx).min(count) {
            let subject = SUBJECTS[i % SUBJECTS.len()].to_owned();
            let n = next.entry(subject.clone()).or_default();
            *n += 1;
            messages.push(OutboxMessage {
                event_id: Uuid::now_v7(),
                kind: "transaction.created",
                payload: json!({ "n": *n }),
                created_at_ms: 1_795_000_000_000,
                subject,
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            });
        }
        written += messages.len();
        tx.append_outbox(&messages).await.unwrap();
        tx.commit().await.unwrap();
    }
}

async fn relays_deliver_everything_in_order_once(backend: Backend, relays: usize) {
    let db = TestDatabase::new(backend).await;
    let store = db.store().await;
    let bus = Arc::new(MemoryBus::new(MemoryBusOptions::default()).unwrap());
    let mut consumer = bus.subscribe("test", &["transaction.created"]).await.unwrap();
    let options = RelayOptions { batch: 50, idle_poll_ms: 60_000, ..RelayOptions::default() };
    let mut tasks = Vec::new();
    for _ in 0..relays {
        // On PostgreSQL each relay its own pool, as in its own process (woken by NOTIFY);
        // SQLite has one process, whose commits wake its relay in-process.
        let own = match backend {
            Backend::Postgres => Arc::new(db.store().await),
            Backend::Sqlite => Arc::new(store.clone()),
        };
        let relay = OutboxRelay::new(own.clone(), bus.clone(), Arc::new(SystemClock), options);
        tasks.push(tokio::spawn(relay.run()));
        tasks.push(tokio::spawn(own.as_ref().clone().listen_for_outbox(db.url.clone())));
    }
    let mut next = HashMap::new();
    commit_events(&store, 300, 7, &mut next).await;

    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..300 {
        // The idle poll is a minute: only the commit signal can wake the relays in time.
        let delivery =
            tokio::time::timeout(Duration::from_secs(20), consumer.next()).await.unwrap().unwrap();
        let event = delivery.event().clone();
        delivery.ack().await.unwrap();
        assert!(ids.insert(event.id.clone()), "published twice: {}", event.id);
        assert!(event.traceparent.is_some());
        let n = event.data["n"].as_u64().unwrap();
        let last = seen.entry(event.subject.clone()).or_default();
        assert_eq!(n, *last + 1, "out of order for {}", event.subject);
        *last = n;
    }
    assert_eq!(seen, next, "every event of every subject");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.outbox_backlog().await.unwrap(), 0, "everything marked published");
    for task in tasks {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_on_sqlite() {
    relays_deliver_everything_in_order_once(Backend::Sqlite, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_on_one_postgresql_outbox() {
    relays_deliver_everything_in_order_once(Backend::Postgres, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_rows_are_purged_and_unpublished_kept() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let store = db.store().await;
    let mut next = HashMap::new();
    commit_events(&store, 10, 10, &mut next).await;
    assert_eq!(store.purge_outbox(i64::MAX).await.unwrap(), 0, "nothing published yet");
    let claim = store.claim_outbox(4).await.unwrap().unwrap();
    let seqs: Vec<i64> = claim.rows().iter().map(|r| r.seq).collect();
    // A second relay cannot claim while the first holds the outbox.
    assert!(store.claim_outbox(4).await.unwrap().is_none());
    claim.finish(&seqs, 1).await.unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap(), 6);
    assert_eq!(store.purge_outbox(2).await.unwrap(), 4);
    assert_eq!(store.outbox_backlog().await.unwrap(), 6);

    // Inbox rows go by age alone; a purged event id may be recorded again.
    let mut tx = store.begin().await.unwrap();
    tx.record_inbox("worker", &["old".into()], 10).await.unwrap();
    tx.record_inbox("worker", &["new".into()], 30).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.purge_inbox(20).await.unwrap(), 1);
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.inbox_seen("worker", &["old".into(), "new".into()]).await.unwrap(), ["new"]);
    tx.record_inbox("worker", &["old".into()], 40).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.purge_inbox(20).await.unwrap(), 0);
}
