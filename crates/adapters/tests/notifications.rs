//! The conformance suite of the notification store port (`NotificationStore`): every case
//! runs against SQLite and PostgreSQL, each test in a throwaway database of its own
//! (PostgreSQL through `TEST_PG_ADMIN_URL`; `scripts/test.sh` starts it).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use ferrobank_adapters::testing::TestDatabase;
use ferrobank_adapters::{Backend, SqlStore};
use ferrobank_application::notifications::{
    AttemptRecord, DeliveryAttempt, DeliveryStatus, EmailDelivery, EventRecord, Notification,
    NotificationStore, ReplayOutcome, WebhookDelivery, WebhookEndpoint, generate_secret,
};
use serde_json::json;
use uuid::Uuid;

/// Generates one test per backend for each case: `case::sqlite`, `case::postgres`.
macro_rules! on_every_backend {
    ($($case:ident),+ $(,)?) => {
        $(
            mod $case {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let db = ferrobank_adapters::testing::TestDatabase::sqlite();
                    super::$case(&db).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let db = ferrobank_adapters::testing::TestDatabase::postgres().await;
                    super::$case(&db).await;
                }
            }
        )+
    };
}

on_every_backend!(
    endpoints_are_bounded_per_owner_listed_newest_first_and_disabled,
    an_event_recorded_twice_creates_nothing_new,
    a_batch_records_each_event_once_in_order,
    active_endpoints_of_several_owners,
    notifications_page_newest_first_filter_unread_and_stay_read,
    claims_lease_deliveries_and_only_the_holder_records,
    replay_starts_a_new_series_of_the_same_message,
    concurrent_deliverers_never_claim_the_same_delivery,
    deliveries_page_with_their_log,
    emails_are_once_per_owner_and_event_and_claimed_like_deliveries,
);

const NOW: i64 = 1_750_000_000_000;

fn endpoint(owner: &str, types: &[&str]) -> WebhookEndpoint {
    WebhookEndpoint {
        id: Uuid::now_v7(),
        owner: owner.into(),
        url: "https://hooks.example.com/in".into(),
        event_types: types.iter().map(|t| (*t).to_owned()).collect(),
        description: Some("test".into()),
        secret: generate_secret(),
        created_at_ms: NOW,
        disabled_at_ms: None,
    }
}

fn notification(owner: &str, event_id: &str) -> Notification {
    Notification {
        id: Uuid::now_v7(),
        owner: owner.into(),
        event_id: event_id.into(),
        event_type: "transaction.completed".into(),
        payment_id: Some(Uuid::nil().to_string()),
        title: "Payment completed: 12.34 EUR".into(),
        data: json!({"owner": owner, "amount": 1234, "currency": "EUR"}),
        created_at_ms: NOW,
        read_at_ms: None,
    }
}

fn delivery(endpoint: &WebhookEndpoint, event_id: &str, due_ms: i64) -> WebhookDelivery {
    let id = Uuid::now_v7();
    WebhookDelivery {
        id,
        endpoint_id: endpoint.id,
        owner: endpoint.owner.clone(),
        event_id: event_id.into(),
        event_type: "transaction.completed".into(),
        message_id: format!("msg_{}", id.simple()),
        payload:
            r#"{"type":"transaction.completed","timestamp":"2025-06-15T12:00:00.000Z","data":{}}"#
                .into(),
        status: DeliveryStatus::Pending,
        series: 1,
        attempts: 0,
        next_attempt_at_ms: Some(due_ms),
        created_at_ms: NOW,
        updated_at_ms: NOW,
        last_status_code: None,
        last_error: None,
    }
}

fn record(
    delivery: &WebhookDelivery,
    attempt: u32,
    code: Option<u16>,
    status: DeliveryStatus,
    next: Option<i64>,
) -> AttemptRecord {
    AttemptRecord {
        attempt: DeliveryAttempt {
            delivery_id: delivery.id,
            series: delivery.series,
            attempt,
            at_ms: NOW,
            duration_ms: 12,
            status_code: code,
            error: code.is_none().then(|| "connection refused".to_owned()),
            response_prefix: code.map(|c| format!("answer {c}")),
        },
        status,
        next_attempt_at_ms: next,
    }
}

async fn store(db: &TestDatabase) -> SqlStore {
    db.store().await
}

async fn endpoints_are_bounded_per_owner_listed_newest_first_and_disabled(db: &TestDatabase) {
    let store = store(db).await;
    let mut registered = Vec::new();
    for _ in 0..3 {
        let e = endpoint("alice", &["transaction.completed"]);
        assert!(store.insert_endpoint(&e, 3).await.unwrap());
        registered.push(e);
    }
    let fourth = endpoint("alice", &["transaction.completed"]);
    assert!(!store.insert_endpoint(&fourth, 3).await.unwrap(), "the bound holds");
    assert!(store.insert_endpoint(&endpoint("bob", &["payment.rejected"]), 3).await.unwrap());

    let listed = store.endpoints("alice").await.unwrap();
    let ids: Vec<Uuid> = listed.iter().map(|e| e.id).collect();
    let mut newest_first: Vec<Uuid> = registered.iter().map(|e| e.id).collect();
    newest_first.reverse();
    assert_eq!(ids, newest_first);
    assert_eq!(listed[0], registered[2], "stored exactly");
    assert_eq!(store.endpoint(registered[0].id).await.unwrap().as_ref(), Some(&registered[0]));
    assert_eq!(store.endpoint(Uuid::now_v7()).await.unwrap(), None);

    // Disabling frees a slot, keeps the endpoint readable and cancels its pending work.
    let pending = delivery(&registered[0], "ev-1", NOW);
    store
        .record_event(&notification("alice", "ev-1"), std::slice::from_ref(&pending))
        .await
        .unwrap();
    store.disable_endpoint(registered[0].id, NOW + 5).await.unwrap();
    store.disable_endpoint(registered[0].id, NOW + 9).await.unwrap();
    let disabled = store.endpoint(registered[0].id).await.unwrap().unwrap();
    assert_eq!(disabled.disabled_at_ms, Some(NOW + 5), "the first deletion counts");
    let cancelled = store.delivery(pending.id).await.unwrap().unwrap();
    assert_eq!(cancelled.status, DeliveryStatus::Cancelled);
    assert!(store.claim_due(NOW + 10, NOW + 100, 10).await.unwrap().is_empty());
    assert!(store.insert_endpoint(&fourth, 3).await.unwrap());
}

async fn an_event_recorded_twice_creates_nothing_new(db: &TestDatabase) {
    let store = store(db).await;
    let a = endpoint("alice", &["transaction.completed"]);
    let b = endpoint("alice", &["transaction.completed"]);
    store.insert_endpoint(&a, 10).await.unwrap();
    store.insert_endpoint(&b, 10).await.unwrap();

    let first = store
        .record_event(&notification("alice", "ev-1"), &[delivery(&a, "ev-1", NOW)])
        .await
        .unwrap();
    assert!(first.notification_created);
    assert_eq!(first.deliveries_created, 1);
    // The redelivered event (new ids, same event id), now also for endpoint b.
    let again = store
        .record_event(
            &notification("alice", "ev-1"),
            &[delivery(&a, "ev-1", NOW), delivery(&b, "ev-1", NOW)],
        )
        .await
        .unwrap();
    assert!(!again.notification_created);
    assert_eq!(again.deliveries_created, 1, "only the endpoint that had none gets one");
    let page = store.notifications("alice", false, None, 10).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(store.deliveries(a.id, None, 10).await.unwrap().items.len(), 1);
    assert_eq!(store.deliveries(b.id, None, 10).await.unwrap().items.len(), 1);

    // The same event id for another owner is another notification.
    let bob = store.record_event(&notification("bob", "ev-1"), &[]).await.unwrap();
    assert!(bob.notification_created);
}

async fn a_batch_records_each_event_once_in_order(db: &TestDatabase) {
    let store = store(db).await;
    let a = endpoint("alice", &["transaction.completed"]);
    store.insert_endpoint(&a, 10).await.unwrap();
    store.record_event(&notification("alice", "ev-0"), &[]).await.unwrap();
    let record = |owner: &str, event: &str, deliveries: Vec<WebhookDelivery>| EventRecord {
        notification: notification(owner, event),
        deliveries,
        email: None,
    };
    // 70 events (more than one statement's chunk): one recorded before, one given twice,
    // the rest new; one with a delivery and an email.
    let mut batch = vec![
        record("alice", "ev-0", vec![]),
        EventRecord {
            email: Some(email("alice", "ev-1", DeliveryStatus::Pending, Some(NOW))),
            ..record("alice", "ev-1", vec![delivery(&a, "ev-1", NOW)])
        },
        record("alice", "ev-1", vec![delivery(&a, "ev-1", NOW)]),
    ];
    batch.extend((2..69).map(|i| record("bob", &format!("ev-{i}"), vec![])));
    let recorded = store.record_events(&batch).await.unwrap();
    assert_eq!(recorded.len(), 70);
    assert!(!recorded[0].notification_created, "recorded before the batch");
    assert!(recorded[1].notification_created);
    assert_eq!(recorded[1].deliveries_created, 1);
    assert_eq!(recorded[1].email_created, Some(DeliveryStatus::Pending));
    assert!(!recorded[2].notification_created, "the second copy of ev-1 finds the first");
    assert_eq!(recorded[2].deliveries_created, 0);
    assert!(recorded[3..].iter().all(|r| r.notification_created && r.deliveries_created == 0));
    assert_eq!(store.notifications("alice", false, None, 100).await.unwrap().items.len(), 2);
    assert_eq!(store.notifications("bob", false, None, 100).await.unwrap().items.len(), 67);
    assert_eq!(store.deliveries(a.id, None, 10).await.unwrap().items.len(), 1);
    // The same batch again: nothing new.
    let again = store.record_events(&batch).await.unwrap();
    assert!(again.iter().all(|r| !r.notification_created && r.deliveries_created == 0));
}

async fn active_endpoints_of_several_owners(db: &TestDatabase) {
    let store = store(db).await;
    let a = endpoint("alice", &["transaction.completed"]);
    let gone = endpoint("alice", &["transaction.completed"]);
    let b = endpoint("bob", &["transaction.created"]);
    let c = endpoint("carol", &["transaction.created"]);
    for e in [&a, &gone, &b, &c] {
        store.insert_endpoint(e, 10).await.unwrap();
    }
    store.disable_endpoint(gone.id, NOW).await.unwrap();
    let found: BTreeSet<Uuid> = store
        .active_endpoints(&["alice", "bob", "dave"])
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(found, BTreeSet::from([a.id, b.id]));
    assert!(store.active_endpoints(&["dave"]).await.unwrap().is_empty());
}

async fn notifications_page_newest_first_filter_unread_and_stay_read(db: &TestDatabase) {
    let store = store(db).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let n = notification("alice", &format!("ev-{i}"));
        store.record_event(&n, &[]).await.unwrap();
        ids.push(n.id);
    }
    store.record_event(&notification("bob", "ev-x"), &[]).await.unwrap();
    ids.reverse();

    let first = store.notifications("alice", false, None, 2).await.unwrap();
    assert_eq!(first.items.iter().map(|n| n.id).collect::<Vec<_>>(), ids[..2]);
    let second = store.notifications("alice", false, first.next_after, 2).await.unwrap();
    assert_eq!(second.items.iter().map(|n| n.id).collect::<Vec<_>>(), ids[2..4]);
    let last = store.notifications("alice", false, second.next_after, 2).await.unwrap();
    assert_eq!(last.items.iter().map(|n| n.id).collect::<Vec<_>>(), ids[4..]);
    assert_eq!(last.next_after, None);

    let read = store.mark_read(ids[1], NOW + 1).await.unwrap().unwrap();
    assert_eq!(read.read_at_ms, Some(NOW + 1));
    let again = store.mark_read(ids[1], NOW + 2).await.unwrap().unwrap();
    assert_eq!(again.read_at_ms, Some(NOW + 1), "the first reading counts");
    assert_eq!(again.data, json!({"owner": "alice", "amount": 1234, "currency": "EUR"}));
    let unread = store.notifications("alice", true, None, 10).await.unwrap();
    assert_eq!(unread.items.len(), 4);
    assert!(unread.items.iter().all(|n| n.id != ids[1]));
    assert_eq!(store.mark_read(Uuid::now_v7(), NOW).await.unwrap(), None);
}

async fn claims_lease_deliveries_and_only_the_holder_records(db: &TestDatabase) {
    let store = store(db).await;
    let e = endpoint("alice", &["transaction.completed"]);
    store.insert_endpoint(&e, 10).await.unwrap();
    let due = delivery(&e, "ev-1", NOW);
    let later = delivery(&e, "ev-2", NOW + 60_000);
    store.record_event(&notification("alice", "ev-1"), std::slice::from_ref(&due)).await.unwrap();
    store.record_event(&notification("alice", "ev-2"), std::slice::from_ref(&later)).await.unwrap();

    let claimed = store.claim_due(NOW, NOW + 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1, "only what is due");
    assert_eq!(claimed[0].delivery, due);
    assert_eq!(claimed[0].endpoint, e);
    assert!(store.claim_due(NOW + 999, NOW + 2_000, 10).await.unwrap().is_empty(), "leased");

    // The lease ran out (its deliverer died): another claim takes it over.
    let taken_over = store.claim_due(NOW + 1_000, NOW + 3_000, 10).await.unwrap();
    assert_eq!(taken_over.len(), 1);
    let stale = record(&due, 1, Some(500), DeliveryStatus::Pending, Some(NOW + 10));
    assert!(!store.record_attempt(claimed[0].claim, &stale, NOW + 1_001).await.unwrap());

    let failed = record(&due, 1, Some(500), DeliveryStatus::Pending, Some(NOW + 5_000));
    assert!(store.record_attempt(taken_over[0].claim, &failed, NOW + 1_002).await.unwrap());
    let after = store.delivery(due.id).await.unwrap().unwrap();
    assert_eq!(after.attempts, 1);
    assert_eq!(after.status, DeliveryStatus::Pending);
    assert_eq!(after.next_attempt_at_ms, Some(NOW + 5_000));
    assert_eq!(after.last_status_code, Some(500));
    assert!(!store.record_attempt(taken_over[0].claim, &failed, NOW).await.unwrap(), "used up");

    let retried = store.claim_due(NOW + 5_000, NOW + 6_000, 10).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].delivery.attempts, 1);
    let ok = record(&retried[0].delivery, 2, Some(204), DeliveryStatus::Delivered, None);
    assert!(store.record_attempt(retried[0].claim, &ok, NOW + 5_001).await.unwrap());
    let delivered = store.delivery(due.id).await.unwrap().unwrap();
    assert_eq!(delivered.status, DeliveryStatus::Delivered);
    assert_eq!(delivered.next_attempt_at_ms, None);
    assert!(
        store
            .claim_due(i64::MAX / 2, i64::MAX / 2, 10)
            .await
            .unwrap()
            .iter()
            .all(|c| c.delivery.id != due.id)
    );
    assert_eq!(store.delivery(later.id).await.unwrap().unwrap().attempts, 0);
}

async fn replay_starts_a_new_series_of_the_same_message(db: &TestDatabase) {
    let store = store(db).await;
    let e = endpoint("alice", &["transaction.completed"]);
    store.insert_endpoint(&e, 10).await.unwrap();
    let d = delivery(&e, "ev-1", NOW);
    store.record_event(&notification("alice", "ev-1"), std::slice::from_ref(&d)).await.unwrap();
    assert_eq!(store.replay(d.id, NOW).await.unwrap(), ReplayOutcome::InProgress);
    assert_eq!(store.replay(Uuid::now_v7(), NOW).await.unwrap(), ReplayOutcome::NotFound);

    let claimed = store.claim_due(NOW, NOW + 1_000, 10).await.unwrap();
    let ok = record(&d, 1, Some(200), DeliveryStatus::Delivered, None);
    assert!(store.record_attempt(claimed[0].claim, &ok, NOW + 1).await.unwrap());

    let ReplayOutcome::Replayed(replayed) = store.replay(d.id, NOW + 10).await.unwrap() else {
        panic!("not replayed");
    };
    assert_eq!(replayed.series, 2);
    assert_eq!(replayed.attempts, 0);
    assert_eq!(replayed.status, DeliveryStatus::Pending);
    assert_eq!(replayed.message_id, d.message_id, "the same webhook-id");
    assert_eq!(replayed.payload, d.payload, "the same body");
    assert_eq!(replayed.next_attempt_at_ms, Some(NOW + 10));

    let again = store.claim_due(NOW + 10, NOW + 1_000, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery.series, 2);
    let ok = record(&again[0].delivery, 1, Some(200), DeliveryStatus::Delivered, None);
    assert!(store.record_attempt(again[0].claim, &ok, NOW + 11).await.unwrap());
    let page = store.deliveries(e.id, None, 10).await.unwrap();
    let log: Vec<(u32, u32)> =
        page.items[0].attempts.iter().map(|a| (a.series, a.attempt)).collect();
    assert_eq!(log, [(1, 1), (2, 1)]);
}

async fn concurrent_deliverers_never_claim_the_same_delivery(db: &TestDatabase) {
    let store = store(db).await;
    let e = endpoint("alice", &["transaction.completed"]);
    store.insert_endpoint(&e, 10).await.unwrap();
    let total = 40;
    for i in 0..total {
        let event = format!("ev-{i}");
        store
            .record_event(&notification("alice", &event), &[delivery(&e, &event, NOW)])
            .await
            .unwrap();
    }
    // Separate pools, as separate replicas would have.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let replica = Arc::new(db.store().await);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                match replica.claim_due(NOW, NOW + 60_000, 3).await {
                    Ok(claimed) if claimed.is_empty() => return mine,
                    Ok(claimed) => mine.extend(claimed.into_iter().map(|c| c.delivery.id)),
                    // SQLite: a writer busy past its timeout; try again.
                    Err(_) if replica.backend() == Backend::Sqlite => {}
                    Err(error) => panic!("{error}"),
                }
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let distinct: BTreeSet<Uuid> = all.iter().copied().collect();
    assert_eq!(all.len(), total, "every delivery claimed once: {all:?}");
    assert_eq!(distinct.len(), total);
}

async fn deliveries_page_with_their_log(db: &TestDatabase) {
    let store = store(db).await;
    let e = endpoint("alice", &["transaction.completed"]);
    store.insert_endpoint(&e, 10).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let event = format!("ev-{i}");
        let d = delivery(&e, &event, NOW);
        store.record_event(&notification("alice", &event), std::slice::from_ref(&d)).await.unwrap();
        ids.push(d.id);
    }
    let claimed = store.claim_due(NOW, NOW + 1, 10).await.unwrap();
    for c in &claimed {
        let r = record(&c.delivery, 1, None, DeliveryStatus::Pending, Some(NOW + 100));
        assert!(store.record_attempt(c.claim, &r, NOW).await.unwrap());
    }
    ids.reverse();
    let first = store.deliveries(e.id, None, 2).await.unwrap();
    assert_eq!(first.items.iter().map(|d| d.delivery.id).collect::<Vec<_>>(), ids[..2]);
    let rest = store.deliveries(e.id, first.next_after, 2).await.unwrap();
    assert_eq!(rest.items.iter().map(|d| d.delivery.id).collect::<Vec<_>>(), ids[2..]);
    assert_eq!(rest.next_after, None);
    let attempt = &rest.items[0].attempts[0];
    assert_eq!(attempt.status_code, None);
    assert_eq!(attempt.error.as_deref(), Some("connection refused"));
    assert_eq!(attempt.duration_ms, 12);
    assert_eq!(rest.items[0].delivery.last_error.as_deref(), Some("connection refused"));
    assert!(store.deliveries(Uuid::now_v7(), None, 10).await.unwrap().items.is_empty());
}

fn email(owner: &str, event: &str, status: DeliveryStatus, due_ms: Option<i64>) -> EmailDelivery {
    EmailDelivery {
        id: Uuid::now_v7(),
        owner: owner.into(),
        event_id: event.into(),
        event_type: "transaction.completed".into(),
        recipient: (status != DeliveryStatus::Skipped).then(|| format!("{owner}@example.com")),
        subject: "Payment completed: 12.34 EUR".into(),
        body: "Payment completed: 12.34 EUR\n".into(),
        status,
        attempts: 0,
        next_attempt_at_ms: due_ms,
        created_at_ms: NOW,
        updated_at_ms: NOW,
        last_error: (status == DeliveryStatus::Skipped).then(|| "no address".to_owned()),
    }
}

async fn emails_are_once_per_owner_and_event_and_claimed_like_deliveries(db: &TestDatabase) {
    let store = store(db).await;
    let first = email("alice", "ev-1", DeliveryStatus::Pending, Some(NOW));
    let n = notification("alice", "ev-1");
    let recorded = store.record_event_with_email(&n, &[], Some(&first)).await.unwrap();
    assert_eq!(recorded.email_created, Some(DeliveryStatus::Pending));
    // Redelivered (even with another address by now): nothing new.
    let again = email("alice", "ev-1", DeliveryStatus::Pending, Some(NOW));
    let recorded = store.record_event_with_email(&n, &[], Some(&again)).await.unwrap();
    assert_eq!(recorded.email_created, None);
    assert_eq!(store.email_delivery("alice", "ev-1").await.unwrap(), Some(first.clone()));
    let skipped = email("bob", "ev-1", DeliveryStatus::Skipped, None);
    let recorded = store
        .record_event_with_email(&notification("bob", "ev-1"), &[], Some(&skipped))
        .await
        .unwrap();
    assert_eq!(recorded.email_created, Some(DeliveryStatus::Skipped));

    // Only pending, due rows are claimed; a claim holds for its lease.
    let claimed = store.claim_due_emails(NOW, NOW + 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].email, first);
    assert!(store.claim_due_emails(NOW + 999, NOW + 2_000, 10).await.unwrap().is_empty());
    let taken_over = store.claim_due_emails(NOW + 1_000, NOW + 3_000, 10).await.unwrap();
    assert_eq!(taken_over.len(), 1, "the lease ran out");
    let retry = EmailDelivery {
        attempts: 1,
        next_attempt_at_ms: Some(NOW + 5_000),
        last_error: Some("connection refused".into()),
        ..first.clone()
    };
    assert!(!store.record_email_attempt(claimed[0].claim, &retry, NOW + 1_001).await.unwrap());
    assert!(store.record_email_attempt(taken_over[0].claim, &retry, NOW + 1_001).await.unwrap());
    let stored = store.email_delivery("alice", "ev-1").await.unwrap().unwrap();
    assert_eq!((stored.attempts, stored.next_attempt_at_ms), (1, Some(NOW + 5_000)));
    assert_eq!(stored.last_error.as_deref(), Some("connection refused"));
    let retried = store.claim_due_emails(NOW + 5_000, NOW + 6_000, 10).await.unwrap();
    let sent = EmailDelivery {
        status: DeliveryStatus::Delivered,
        attempts: 2,
        next_attempt_at_ms: None,
        last_error: None,
        ..first.clone()
    };
    assert!(store.record_email_attempt(retried[0].claim, &sent, NOW + 5_001).await.unwrap());
    assert!(store.claim_due_emails(i64::MAX, i64::MAX, 10).await.unwrap().is_empty());
    let stored = store.email_delivery("alice", "ev-1").await.unwrap().unwrap();
    assert_eq!((stored.status, stored.attempts), (DeliveryStatus::Delivered, 2));
}
