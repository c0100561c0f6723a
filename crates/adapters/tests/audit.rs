//! The conformance suite of the audit log port (`AuditLog`): every case runs against
//! SQLite, PostgreSQL and MongoDB. Each test has its own database (MongoDB: its own
//! database on the server at `FERROBANK_TEST_MONGO_URL`, default
//! `mongodb://127.0.0.1:27017/?directConnection=true`), dropped when the test ends; a server
//! that is not running fails the test, `scripts/test.sh` starts them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use ferrobank_adapters::audit::{MongoAuditLog, MongoAuditOptions};
use ferrobank_adapters::testing::TestDatabase;
use ferrobank_application::{AuditLog, AuditQuery, verify_log};
use ferrobank_domain::audit::{
    AuditAction, AuditActor, AuditOutcome, AuditRecord, ChainBreak, NewAuditEntry, hash_hex,
};
use mongodb::bson::doc;
use serde_json::json;
use sqlx::AnyPool;
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
enum Store {
    Sqlite,
    Postgres,
    Mongo,
}

/// Generates one test per store for each case: `case::sqlite`, `case::postgres`, `case::mongo`.
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
    appends_link_into_a_chain_that_verifies,
    concurrent_appenders_never_fork_the_chain,
    a_batch_links_in_order_and_skips_ids_already_stored,
    concurrent_batches_never_fork_the_chain,
    a_record_altered_in_the_store_is_named,
    a_record_altered_and_rehashed_in_the_store_is_named,
    a_record_deleted_from_the_store_is_named,
    queries_filter_and_page_by_cursor,
);

fn mongo_url() -> String {
    std::env::var("FERROBANK_TEST_MONGO_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into())
}

/// One test's store: a throwaway SQL database, or a MongoDB database of its own that is
/// dropped with the harness (also when the test fails).
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

    /// A new connection to the log, as another process would have.
    async fn log(&self) -> Arc<dyn AuditLog> {
        match &self.sql {
            Some(db) => Arc::new(db.store().await),
            None => {
                let options = MongoAuditOptions {
                    database: self.mongo_database.clone(),
                    ..MongoAuditOptions::default()
                };
                match MongoAuditLog::connect(&mongo_url(), options).await {
                    Ok(log) => Arc::new(log),
                    Err(error) => panic!(
                        "MongoDB at {} is required for this test ({error}); run scripts/test.sh, \
                         which starts it, or set FERROBANK_TEST_MONGO_URL",
                        mongo_url()
                    ),
                }
            }
        }
    }

    async fn sql_pool(&self) -> AnyPool {
        sqlx::any::install_default_drivers();
        AnyPool::connect(&self.sql.as_ref().unwrap().url).await.unwrap()
    }

    async fn mongo_records(&self) -> mongodb::Collection<mongodb::bson::Document> {
        let client = mongodb::Client::with_uri_str(mongo_url()).await.unwrap();
        client.database(&self.mongo_database).collection("audit_records")
    }

    /// Changes a record's resource behind the log's back; with `hash`, also its stored
    /// hash (an attacker re-hashing what they changed).
    async fn tamper(&self, seq: u64, resource: &str, hash: Option<[u8; 32]>) {
        let seq = i64::try_from(seq).unwrap();
        if self.sql.is_some() {
            let pool = self.sql_pool().await;
            sqlx::query("UPDATE audit_records SET resource = $1 WHERE seq = $2")
                .bind(resource)
                .bind(seq)
                .execute(&pool)
                .await
                .unwrap();
            if let Some(hash) = hash {
                sqlx::query("UPDATE audit_records SET hash = $1 WHERE seq = $2")
                    .bind(hash_hex(&hash))
                    .bind(seq)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            pool.close().await;
        } else {
            let mut set = doc! { "resource": resource };
            if let Some(hash) = hash {
                set.insert("hash", hash_hex(&hash));
            }
            let done = self
                .mongo_records()
                .await
                .update_one(doc! { "_id": seq }, doc! { "$set": set })
                .await;
            assert_eq!(done.unwrap().modified_count, 1);
        }
    }

    /// Deletes a record behind the log's back.
    async fn delete(&self, seq: u64) {
        let seq = i64::try_from(seq).unwrap();
        if self.sql.is_some() {
            let pool = self.sql_pool().await;
            sqlx::query("DELETE FROM audit_records WHERE seq = $1")
                .bind(seq)
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        } else {
            let done = self.mongo_records().await.delete_one(doc! { "_id": seq }).await;
            assert_eq!(done.unwrap().deleted_count, 1);
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.sql.is_some() {
            return;
        }
        let database = self.mongo_database.clone();
        // Drop may run inside a runtime; a thread with its own runtime can block.
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

fn entry(actor: &str, action: &str, resource: &str, at_ms: i64) -> NewAuditEntry {
    let actor = match actor.strip_prefix("svc:") {
        Some(service) => AuditActor::service(service).unwrap(),
        None => AuditActor::subject(actor).unwrap(),
    };
    NewAuditEntry::new(
        Uuid::now_v7(),
        at_ms,
        actor,
        AuditAction::parse(action).unwrap(),
        resource,
        AuditOutcome::Success,
        json!({ "amount_minor": at_ms, "note": "ünïcode \"quoted\"", "nested": {"b": 1, "a": [1.5, null]} }),
    )
    .unwrap()
}

async fn append_n(log: &dyn AuditLog, n: u64) -> Vec<AuditRecord> {
    let mut records = Vec::new();
    for i in 0..n {
        let at_ms = 1_000 + i64::try_from(i).unwrap();
        records
            .push(log.append(entry("alice", "payment.created", "account/1", at_ms)).await.unwrap());
    }
    records
}

async fn appends_link_into_a_chain_that_verifies(harness: Harness) {
    let log = harness.log().await;
    assert_eq!(verify_log(&*log).await.unwrap(), Ok(0));
    let appended = append_n(&*log, 20).await;
    for (i, record) in appended.iter().enumerate() {
        assert_eq!(record.seq, i as u64 + 1);
        if i > 0 {
            assert_eq!(record.prev_hash, appended[i - 1].hash);
        }
    }
    // Read back exactly as appended, from any seq.
    assert_eq!(log.read(1, 100).await.unwrap(), appended);
    assert_eq!(log.read(5, 3).await.unwrap(), appended[4..7].to_vec());
    assert_eq!(verify_log(&*log).await.unwrap(), Ok(20));
    // A retried append (same id) gets the first record back and adds nothing.
    let first = appended[3].clone();
    assert_eq!(log.append(retry_of(&first)).await.unwrap(), first);
    assert_eq!(verify_log(&*log).await.unwrap(), Ok(20));
}

async fn concurrent_appenders_never_fork_the_chain(harness: Harness) {
    const TASKS: u64 = 8;
    const PER_TASK: u64 = 50;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        // Each task its own connection, as separate processes would be.
        let log = harness.log().await;
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..PER_TASK {
                let at_ms = i64::try_from(task * 1_000 + i).unwrap();
                let actor = format!("user-{task}");
                let record =
                    log.append(entry(&actor, "payment.created", "account/1", at_ms)).await.unwrap();
                seqs.push(record.seq);
            }
            seqs
        }));
    }
    let mut seqs = BTreeSet::new();
    for task in tasks {
        for seq in task.await.unwrap() {
            assert!(seqs.insert(seq), "seq {seq} handed out twice");
        }
    }
    assert_eq!(seqs, (1..=TASKS * PER_TASK).collect());
    let log = harness.log().await;
    assert_eq!(verify_log(&*log).await.unwrap(), Ok(TASKS * PER_TASK));
}

fn retry_of(record: &AuditRecord) -> NewAuditEntry {
    NewAuditEntry {
        id: record.id,
        at_ms: record.at_ms,
        actor: record.actor.clone(),
        action: record.action.clone(),
        resource: record.resource.clone(),
        outcome: record.outcome,
        details: record.details.clone(),
    }
}

async fn a_batch_links_in_order_and_skips_ids_already_stored(harness: Harness) {
    let log = harness.log().await;
    let before = append_n(&*log, 3).await;
    let fresh: Vec<NewAuditEntry> =
        (0..5).map(|i| entry("bob", "transfer.created", "account/2", 5_000 + i)).collect();
    // Stored already, new, the same new entry twice, then the rest.
    let mut batch = vec![retry_of(&before[1]), fresh[0].clone(), fresh[0].clone()];
    batch.extend(fresh[1..].iter().cloned());
    let records = log.append_all(batch).await.unwrap();
    assert_eq!(records.len(), 7);
    assert_eq!(records[0], before[1], "a stored id gets its stored record back");
    assert_eq!(records[1], records[2], "a repeated id is appended once");
    let seqs: Vec<u64> = records[1..].iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [4, 4, 5, 6, 7, 8]);
    assert_eq!(records[1].prev_hash, before[2].hash);
    for (record, entry) in records[3..].iter().zip(&fresh[1..]) {
        assert_eq!(record.id, entry.id, "in the order given");
    }
    assert_eq!(log.read(1, 100).await.unwrap().len(), 8);
    assert_eq!(verify_log(&*log).await.unwrap(), Ok(8));
    // The same batch again (a redelivery) adds nothing and returns the same records.
    let again: Vec<NewAuditEntry> = records.iter().map(retry_of).collect();
    assert_eq!(log.append_all(again).await.unwrap(), records);
    assert_eq!(log.append_all(Vec::new()).await.unwrap(), Vec::new());
    assert_eq!(verify_log(&*log).await.unwrap(), Ok(8));
}

async fn concurrent_batches_never_fork_the_chain(harness: Harness) {
    const TASKS: u64 = 4;
    const BATCHES: u64 = 10;
    const PER_BATCH: u64 = 25;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        // Each task its own connection, as separate processes would be.
        let log = harness.log().await;
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for batch in 0..BATCHES {
                let entries = (0..PER_BATCH)
                    .map(|i| {
                        let at_ms = i64::try_from(task * 100_000 + batch * 1_000 + i).unwrap();
                        entry(&format!("user-{task}"), "payment.created", "account/1", at_ms)
                    })
                    .collect();
                let records = log.append_all(entries).await.unwrap();
                // In the order given (on MongoDB another process may link between two
                // parts of a batch that lost a race half-way; the chain still holds).
                let batch_seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
                assert!(batch_seqs.windows(2).all(|w| w[0] < w[1]), "{batch_seqs:?}");
                seqs.extend(batch_seqs);
            }
            seqs
        }));
    }
    let mut seqs = BTreeSet::new();
    for task in tasks {
        for seq in task.await.unwrap() {
            assert!(seqs.insert(seq), "seq {seq} handed out twice");
        }
    }
    let total = TASKS * BATCHES * PER_BATCH;
    assert_eq!(seqs, (1..=total).collect());
    let log = harness.log().await;
    assert_eq!(verify_log(&*log).await.unwrap(), Ok(total));
}

async fn a_record_altered_in_the_store_is_named(harness: Harness) {
    let log = harness.log().await;
    let appended = append_n(&*log, 10).await;
    harness.tamper(4, "account/2", None).await;
    assert_eq!(
        verify_log(&*log).await.unwrap(),
        Err(ChainBreak::Altered { seq: 4, id: appended[3].id })
    );
}

async fn a_record_altered_and_rehashed_in_the_store_is_named(harness: Harness) {
    let log = harness.log().await;
    let appended = append_n(&*log, 10).await;
    let mut forged = appended[6].clone();
    forged.resource = "account/2".into();
    harness.tamper(7, "account/2", Some(forged.compute_hash())).await;
    assert_eq!(
        verify_log(&*log).await.unwrap(),
        Err(ChainBreak::Rewritten { seq: 7, id: appended[6].id })
    );
}

async fn a_record_deleted_from_the_store_is_named(harness: Harness) {
    let log = harness.log().await;
    let appended = append_n(&*log, 10).await;
    harness.delete(6).await;
    assert_eq!(
        verify_log(&*log).await.unwrap(),
        Err(ChainBreak::Removed { seq: 6, next_seq: 7, next_id: appended[6].id })
    );
}

async fn queries_filter_and_page_by_cursor(harness: Harness) {
    let log = harness.log().await;
    let mut appended = Vec::new();
    for (i, at_ms) in (10_000..10_300_i64).step_by(10).enumerate() {
        let actor = ["alice", "bob", "svc:payment-worker"][i % 3];
        let action = ["payment.created", "access.denied"][i % 2];
        let resource = format!("account/{}", i % 5);
        appended.push(log.append(entry(actor, action, &resource, at_ms)).await.unwrap());
    }
    let all = |query: AuditQuery| {
        let log = Arc::clone(&log);
        async move {
            // Walk every page; each record once, in seq order.
            let mut found = Vec::new();
            let mut query = AuditQuery { limit: 4, ..query };
            loop {
                let page = log.query(&query).await.unwrap();
                assert!(page.records.len() <= 4);
                found.extend(page.records.iter().map(|record| record.seq));
                match page.next_after {
                    Some(after) => query.after_seq = Some(after),
                    None => return found,
                }
            }
        }
    };
    let expect = |keep: &dyn Fn(&AuditRecord) -> bool| {
        appended.iter().filter(|record| keep(record)).map(|record| record.seq).collect::<Vec<_>>()
    };

    assert_eq!(all(AuditQuery::default()).await, expect(&|_| true));
    let alice = AuditActor::subject("alice").unwrap();
    assert_eq!(
        all(AuditQuery { actor: Some(alice.clone()), ..AuditQuery::default() }).await,
        expect(&|r| r.actor == alice)
    );
    let worker = AuditActor::service("payment-worker").unwrap();
    assert_eq!(
        all(AuditQuery { actor: Some(worker.clone()), ..AuditQuery::default() }).await,
        expect(&|r| r.actor == worker)
    );
    // The same id as a subject is another actor.
    assert!(
        all(AuditQuery {
            actor: Some(AuditActor::subject("payment-worker").unwrap()),
            ..AuditQuery::default()
        })
        .await
        .is_empty()
    );
    let denied = AuditAction::parse("access.denied").unwrap();
    assert_eq!(
        all(AuditQuery { action: Some(denied.clone()), ..AuditQuery::default() }).await,
        expect(&|r| r.action == denied)
    );
    assert_eq!(
        all(AuditQuery { resource: Some("account/3".into()), ..AuditQuery::default() }).await,
        expect(&|r| r.resource == "account/3")
    );
    assert_eq!(
        all(AuditQuery { from_ms: Some(10_050), until_ms: Some(10_200), ..AuditQuery::default() })
            .await,
        expect(&|r| (10_050..10_200).contains(&r.at_ms))
    );
    assert_eq!(
        all(AuditQuery {
            actor: Some(alice.clone()),
            action: Some(denied.clone()),
            from_ms: Some(10_100),
            ..AuditQuery::default()
        })
        .await,
        expect(&|r| r.actor == alice && r.action == denied && r.at_ms >= 10_100)
    );
    // A page holds the records themselves, exactly as appended.
    let page = log.query(&AuditQuery { limit: 2, ..AuditQuery::default() }).await.unwrap();
    assert_eq!(page.records, appended[..2].to_vec());
    assert_eq!(page.next_after, Some(2));
}
