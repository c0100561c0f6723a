//! The conformance suite of the activity log port (`ActivityLog`) and the audit consumer
//! on every store: SQLite, PostgreSQL and MongoDB (the server at `FERROBANK_TEST_MONGO_URL`,
//! default `mongodb://127.0.0.1:27017/?directConnection=true`; `scripts/test.sh` starts
//! SecantusDB there). Each test has its own database, dropped when it ends.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use ferrobank_adapters::audit::{
    MongoActivityLog, MongoActivityOptions, MongoAuditLog, MongoAuditOptions,
};
use ferrobank_adapters::bus::{MemoryBus, MemoryBusOptions};
use ferrobank_adapters::testing::TestDatabase;
use ferrobank_application::bus::rfc3339_from_unix_ms;
use ferrobank_application::{
    AUDIT_CONSUMER, AUDITED_EVENT_TYPES, ActivityEntry, ActivityLog, ActivityQuery, AuditConsumer,
    AuditLog, AuditQuery, Event, EventBus, verify_log,
};
use ferrobank_domain::audit::{AuditActor, AuditOutcome};
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
enum Store {
    Sqlite,
    Postgres,
    Mongo,
}

macro_rules! on_every_store {
    ($($case:ident),+ $(,)?) => {
        $(
            mod $case {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$case(super::Harness::new(super::Store::Sqlite).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$case(super::Harness::new(super::Store::Postgres).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mongo() {
                    super::$case(super::Harness::new(super::Store::Mongo).await).await;
                }
            }
        )+
    };
}

on_every_store!(
    activity_appends_once_per_event_id,
    activity_queries_filter_and_page_in_time_order,
    a_redelivered_event_is_recorded_once,
    concurrent_deliveries_of_one_event_are_recorded_once,
    the_running_consumer_records_every_event_type,
);

fn mongo_url() -> String {
    std::env::var("FERROBANK_TEST_MONGO_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into())
}

struct Harness {
    sql: Option<TestDatabase>,
    mongo_database: String,
}

impl Harness {
    async fn new(store: Store) -> Self {
        let sql = match store {
            Store::Sqlite => Some(TestDatabase::sqlite()),
            Store::Postgres => Some(TestDatabase::postgres().await),
            Store::Mongo => None,
        };
        if let Some(db) = &sql {
            db.store().await;
        }
        Self { sql, mongo_database: format!("fbt_{}", Uuid::new_v4().simple()) }
    }

    async fn audit(&self) -> Arc<dyn AuditLog> {
        match &self.sql {
            Some(db) => Arc::new(db.store().await),
            None => {
                let options = MongoAuditOptions {
                    database: self.mongo_database.clone(),
                    ..MongoAuditOptions::default()
                };
                Arc::new(MongoAuditLog::connect(&mongo_url(), options).await.unwrap_or_else(|e| {
                    panic!("MongoDB at {} is required ({e}); run scripts/test.sh", mongo_url())
                }))
            }
        }
    }

    async fn activity(&self) -> Arc<dyn ActivityLog> {
        match &self.sql {
            Some(db) => Arc::new(db.store().await),
            None => {
                let options = MongoActivityOptions {
                    database: self.mongo_database.clone(),
                    ..MongoActivityOptions::default()
                };
                Arc::new(MongoActivityLog::connect(&mongo_url(), options).await.unwrap_or_else(
                    |e| panic!("MongoDB at {} is required ({e}); run scripts/test.sh", mongo_url()),
                ))
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.sql.is_some() {
            return;
        }
        let database = self.mongo_database.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async move {
                    if let Ok(client) = mongodb::Client::with_uri_str(mongo_url()).await {
                        let _ = client.database(&database).drop().await;
                    }
                });
            }
        });
        let _ = dropped.join();
    }
}

fn activity(payment: &str, at_ms: i64) -> ActivityEntry {
    ActivityEntry {
        id: Uuid::now_v7(),
        payment_id: payment.into(),
        at_ms,
        action: "transaction.created".into(),
        summary: format!("alice pays 12.34 EUR to Bob: pending ({payment})"),
        document: json!({
            "payment_id": payment, "amount": "12.34 EUR", "amount_minor": 1234,
            "beneficiary": {"name": "Bob ünïcode", "iban": "DE89…3000"},
            "status_entry": {"status": "pending", "reason": null}, "ratio": 1.5, "tags": [1, "x"],
        }),
    }
}

async fn activity_appends_once_per_event_id(harness: Harness) {
    let log = harness.activity().await;
    let first = activity("p-1", 1_000);
    assert!(log.append(&first).await.unwrap());
    let replay = ActivityEntry { summary: "changed".into(), ..first.clone() };
    assert!(!log.append(&replay).await.unwrap(), "the same event id is stored once");
    let page = log.query(&ActivityQuery { limit: 10, ..ActivityQuery::default() }).await.unwrap();
    assert_eq!(page.entries, vec![first], "the first entry stays, exactly as appended");
    assert_eq!(page.next_after, None);
}

async fn activity_queries_filter_and_page_in_time_order(harness: Harness) {
    let log = harness.activity().await;
    let mut appended = Vec::new();
    for i in 0..23_i64 {
        // Time goes back and forth, with ties: the order is (at_ms, id), not insertion.
        let entry = activity(&format!("p-{}", i % 3), 5_000 + (i * 7) % 5);
        log.append(&entry).await.unwrap();
        appended.push(entry);
    }
    appended.sort_by_key(|entry| (entry.at_ms, entry.id));
    let walk = |payment_id: Option<&str>| {
        let log = Arc::clone(&log);
        let mut query =
            ActivityQuery { payment_id: payment_id.map(str::to_owned), after: None, limit: 4 };
        async move {
            let mut found = Vec::new();
            loop {
                let page = log.query(&query).await.unwrap();
                assert!(page.entries.len() <= 4);
                found.extend(page.entries.iter().map(|entry| entry.id));
                match page.next_after {
                    Some(after) => query.after = Some(after),
                    None => return found,
                }
            }
        }
    };
    assert_eq!(walk(None).await, appended.iter().map(|e| e.id).collect::<Vec<_>>());
    assert_eq!(
        walk(Some("p-1")).await,
        appended.iter().filter(|e| e.payment_id == "p-1").map(|e| e.id).collect::<Vec<_>>()
    );
    assert!(walk(Some("p-none")).await.is_empty());
}

fn payment_event(type_: &str, payment_id: &str, at_ms: i64) -> Event {
    Event::new(
        Uuid::now_v7(),
        "/ferrobank/payments",
        type_,
        "acct-1",
        rfc3339_from_unix_ms(at_ms),
        json!({
            "payment_id": payment_id, "owner": "alice", "amount": 1234, "currency": "EUR",
            "status": "completed", "actor": {"kind": "subject", "id": "alice-sub"},
            "beneficiary": {"kind": "external", "iban": "DE89370400440532013000",
                            "name": "Erika Mustermann", "country": "DE"},
        }),
    )
    .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
}

fn bus() -> Arc<MemoryBus> {
    Arc::new(MemoryBus::new(MemoryBusOptions::default()).unwrap())
}

async fn records_of(log: &dyn AuditLog, resource: &str) -> Vec<Value> {
    let query = AuditQuery { resource: Some(resource.into()), limit: 100, ..AuditQuery::default() };
    let page = log.query(&query).await.unwrap();
    page.records.iter().map(|r| json!({"id": r.id, "action": r.action.as_str()})).collect()
}

async fn a_redelivered_event_is_recorded_once(harness: Harness) {
    let log = harness.audit().await;
    let activity_log = harness.activity().await;
    let consumer = AuditConsumer::new(log.clone(), Some(activity_log.clone()));
    let bus = bus();
    let mut subscription = bus.subscribe(AUDIT_CONSUMER, &AUDITED_EVENT_TYPES).await.unwrap();
    let event = payment_event("transaction.completed", "p-7", 1_738_324_800_250);
    for _ in 0..5 {
        bus.publish(&event).await.unwrap();
    }
    for _ in 0..5 {
        let delivery = subscription.next().await.unwrap();
        assert_eq!(delivery.event().id, event.id);
        consumer.settle(delivery).await.unwrap();
    }
    assert_eq!(
        records_of(&*log, "payment:p-7").await,
        vec![json!({"id": event.id, "action": "transaction.completed"})]
    );
    assert_eq!(verify_log(&*log).await.unwrap(), Ok(1));
    let record = log.read(1, 1).await.unwrap().remove(0);
    assert_eq!(record.actor, AuditActor::subject("alice-sub").unwrap());
    assert_eq!(record.outcome, AuditOutcome::Success);
    assert_eq!(record.at_ms, 1_738_324_800_250);
    let page = activity_log
        .query(&ActivityQuery { payment_id: Some("p-7".into()), limit: 10, after: None })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].document["amount"], "12.34 EUR");
    assert_eq!(page.entries[0].document["beneficiary"]["name"], "Erika Mustermann");
    // Nothing was retried or dead-lettered.
    assert!(bus.dead_letters(AUDIT_CONSUMER, 10).await.unwrap().is_empty());
}

async fn concurrent_deliveries_of_one_event_are_recorded_once(harness: Harness) {
    // Competing consumers (other processes) handling the same event at the same time.
    let mut tasks = Vec::new();
    let event = payment_event("transaction.created", "p-9", 2_000);
    for _ in 0..5 {
        let consumer = AuditConsumer::new(harness.audit().await, Some(harness.activity().await));
        let event = event.clone();
        tasks.push(tokio::spawn(async move { consumer.handle(&event).await.unwrap() }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let log = harness.audit().await;
    assert_eq!(records_of(&*log, "payment:p-9").await.len(), 1);
    assert_eq!(verify_log(&*log).await.unwrap(), Ok(1));
    let page = harness
        .activity()
        .await
        .query(&ActivityQuery { limit: 10, ..ActivityQuery::default() })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
}

async fn the_running_consumer_records_every_event_type(harness: Harness) {
    let log = harness.audit().await;
    let activity_log = harness.activity().await;
    let bus = bus();
    // The consumer's queue and bindings outlive subscriptions: bind first, so nothing
    // published before the task subscribes is lost.
    drop(bus.subscribe(AUDIT_CONSUMER, &AUDITED_EVENT_TYPES).await.unwrap());
    let task =
        tokio::spawn(AuditConsumer::new(log.clone(), Some(activity_log.clone())).run(bus.clone()));
    let mut published = Vec::new();
    for (i, type_) in AUDITED_EVENT_TYPES.iter().enumerate() {
        let at_ms = 10_000 + i64::try_from(i).unwrap();
        let data = match type_.split('.').next().unwrap() {
            "account" => json!({"account_id": format!("a-{i}")}),
            "transfer" => json!({"transfer_id": format!("t-{i}"), "amount": 5, "currency": "EUR"}),
            _ => payment_event(type_, &format!("p-{i}"), at_ms).data,
        };
        let event = Event::new(
            Uuid::now_v7(),
            "/ferrobank/test",
            *type_,
            "s",
            rfc3339_from_unix_ms(at_ms),
            data,
        );
        bus.publish(&event).await.unwrap();
        // Redelivered once more, as an at-least-once bus may.
        bus.publish(&event).await.unwrap();
        published.push(event);
    }
    // An unreadable event (no payment id) goes to the dead-letter queue.
    let broken = Event::new(
        Uuid::now_v7(),
        "/ferrobank/test",
        "payment.rejected",
        "s",
        rfc3339_from_unix_ms(1),
        json!({}),
    );
    bus.publish(&broken).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let everything = ActivityQuery { limit: 100, ..ActivityQuery::default() };
    loop {
        let dead = bus.dead_letters(AUDIT_CONSUMER, 10).await.unwrap();
        let records = log.read(1, 100).await.unwrap();
        // A batch's activity entries are appended after its audit records: wait for both.
        let activity = activity_log.query(&everything).await.unwrap().entries.len();
        if records.len() >= published.len() && activity >= 7 && !dead.is_empty() {
            assert_eq!(dead.len(), 1);
            assert_eq!(dead[0].event.as_ref().map(|e| e.id.clone()), Some(broken.id.clone()));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} records", records.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let records = log.read(1, 100).await.unwrap();
    let ids: Vec<String> = records.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(ids, published.iter().map(|e| e.id.clone()).collect::<Vec<_>>());
    assert_eq!(verify_log(&*log).await.unwrap(), Ok(AUDITED_EVENT_TYPES.len() as u64));
    let resources: Vec<&str> = records.iter().map(|r| r.resource.as_str()).collect();
    assert_eq!(resources[0], "account:a-0");
    assert_eq!(resources[1], "transfer:t-1");
    assert_eq!(resources[4], "payment:p-4");
    let activity = activity_log.query(&everything).await.unwrap();
    assert_eq!(activity.entries.len(), 7, "one entry per payment event, none for the ledger");
}
