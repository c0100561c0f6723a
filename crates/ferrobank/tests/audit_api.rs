//! `GET /api/audit`, `/api/audit/verify` and `/api/activity` through the real router with
//! real tokens, and every refusal (of the API and of the edge in front of it) showing up in
//! the trail as `access.denied`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Reply, TestIdp, client, poll_until};
use ferrobank::config::{Config, DEFAULT_AUDIENCE};
use ferrobank_adapters::SqlStore;
use ferrobank_adapters::oidc::{OidcConfig, TokenValidator};
use ferrobank_adapters::testing::TestDatabase;
use ferrobank_application::bus::rfc3339_from_unix_ms;
use ferrobank_application::{
    AuditConsumer, AuditLog, Clock, Event, IdempotencyStore, LedgerLimits, LedgerService,
    SystemClock,
};
use ferrobank_domain::audit::{AuditAction, AuditActor, AuditOutcome, NewAuditEntry};
use ferrobank_interfaces::gateway::Target;
use ferrobank_interfaces::{AppState, HttpLimits, metrics_handle, router};
use serde_json::{Value, json};
use uuid::Uuid;

const COMPLIANCE: &str = "compliance-officer";

/// The API with the audit trail, activity log and denied-access sink wired, on SQLite.
struct AuditApp {
    address: String,
    idp: TestIdp,
    log: Arc<dyn AuditLog>,
    store: SqlStore,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _db: TestDatabase,
}

impl Drop for AuditApp {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl AuditApp {
    /// The API alone, or (`edge`) behind the gateway enforcing deploy/istio.
    async fn start(edge: bool) -> Self {
        let idp = TestIdp::start().await;
        let db = TestDatabase::sqlite();
        let store = db.store().await;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let config = Config::default();
        let stores = ferrobank::audit::open(&config, &store).await.unwrap();
        let (sink, drain) =
            ferrobank::audit::start_denied_sink(&config, stores.log.clone(), clock.clone());
        let shared = Arc::new(store.clone());
        let (ledger, writer) =
            LedgerService::start(shared.clone(), clock.clone(), LedgerLimits::default());
        let oidc = OidcConfig::new(idp.issuer.clone(), vec![DEFAULT_AUDIENCE.to_owned()]);
        let idempotency: Arc<dyn IdempotencyStore> = shared;
        let state = AppState {
            ledger,
            idempotency,
            clock,
            limits: HttpLimits::default(),
            metrics: metrics_handle(),
            auth: Some(Arc::new(TokenValidator::new(&oidc).unwrap())),
            idp: None,
            api: true,
            payments: None,
            notifications: None,
            audit: Some(stores.log.clone()),
            activity: Some(stores.activity.clone()),
            audit_sink: Some(sink.clone()),
        };
        let mut app = router(state);
        if edge {
            let mut config = Config::default();
            config.gateway.enabled = true;
            let gateway = ferrobank::edge::build(
                &config,
                Target::Local(app),
                Some(idp.issuer.clone()),
                Vec::new(),
            )
            .await
            .unwrap();
            gateway.record_denials_to(sink);
            app = ferrobank::edge::router(gateway);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, app).await;
        });
        Self { address, idp, log: stores.log, store, tasks: vec![server, drain, writer], _db: db }
    }

    async fn get(&self, token: Option<&str>, path: &str) -> Reply {
        let mut request = client().get(format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Reply::read(request.send().await.unwrap()).await
    }

    fn token(&self, subject: &str, role: &str) -> String {
        self.idp.token(subject, &[role])
    }

    /// Polls `GET /api/audit?action=access.denied` as a compliance officer until `n`
    /// records are there.
    async fn denied_records(&self, n: usize) -> Vec<Value> {
        let officer = self.token("officer-1", COMPLIANCE);
        poll_until("access.denied records", Duration::from_secs(10), || async {
            let page =
                self.get(Some(&officer), "/api/audit?action=access.denied").await.expect(200);
            let records = page["records"].as_array().unwrap().clone();
            (records.len() >= n).then_some(records)
        })
        .await
    }
}

fn event(type_: &str, payment_id: &str, at_ms: i64) -> Event {
    Event::new(
        Uuid::now_v7(),
        "/ferrobank/payments",
        type_,
        "acct-1",
        rfc3339_from_unix_ms(at_ms),
        json!({
            "payment_id": payment_id, "owner": "alice", "amount": 250, "currency": "EUR",
            "actor": {"kind": "subject", "id": "alice"},
            "beneficiary": {"kind": "internal", "account": "0191-b"},
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_compliance_officers_read_and_every_refusal_is_recorded() {
    let app = AuditApp::start(false).await;
    let consumer = AuditConsumer::new(app.log.clone(), Some(Arc::new(app.store.clone())));
    for (i, type_) in ["transaction.created", "transaction.processing", "transaction.completed"]
        .iter()
        .enumerate()
    {
        consumer.handle(&event(type_, "p-1", 1_000 + i64::try_from(i).unwrap())).await.unwrap();
    }
    let officer = app.token("officer-1", COMPLIANCE);
    let page = app.get(Some(&officer), "/api/audit").await.expect(200);
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["seq"], 1);
    assert_eq!(records[0]["action"], "transaction.created");
    assert_eq!(records[0]["resource"], "payment:p-1");
    assert_eq!(records[0]["actor"], json!({"kind": "subject", "id": "alice"}));
    assert_eq!(records[0]["at"], "1970-01-01T00:00:01.000Z");
    assert_eq!(records[1]["prev_hash"], records[0]["hash"]);
    assert_eq!(page["next_after"], Value::Null);

    // A customer (and every other role) is refused; so is nobody; so is a forged token.
    let customer = app.token("bob", "customer");
    let refused = app.get(Some(&customer), "/api/audit").await;
    refused.expect_problem(403, "forbidden");
    let request_id = refused.header("x-request-id").unwrap().to_owned();
    for role in ["banking-admin", "risk-analyst", "loan-officer"] {
        let token = app.token(&format!("{role}-1"), role);
        app.get(Some(&token), "/api/audit/verify").await.expect_problem(403, "forbidden");
    }
    app.get(None, "/api/audit").await.expect_problem(401, "unauthorized");
    let forged = app.idp.forge(&app.idp.claims("mallory", &[COMPLIANCE]));
    app.get(Some(&forged), "/api/activity").await.expect_problem(401, "invalid_token");

    let denied = app.denied_records(6).await;
    assert_eq!(denied.len(), 6, "{denied:#?}");
    let bob = &denied[0];
    assert_eq!(bob["actor"], json!({"kind": "subject", "id": "bob"}));
    assert_eq!(bob["resource"], "GET /api/audit");
    assert_eq!(bob["outcome"], "denied");
    assert_eq!(bob["details"]["status"], 403);
    assert_eq!(bob["details"]["reason"], "forbidden");
    assert_eq!(bob["details"]["layer"], "api");
    assert_eq!(bob["details"]["request_id"], request_id);
    assert_eq!(denied[1]["actor"]["id"], "banking-admin-1");
    assert_eq!(denied[1]["resource"], "GET /api/audit/verify");
    let anonymous = &denied[4];
    assert_eq!(anonymous["actor"], json!({"kind": "anonymous", "id": "anonymous"}));
    assert_eq!(anonymous["details"]["status"], 401);
    assert_eq!(anonymous["details"]["reason"], "unauthorized");
    // The forged token's claims are not trusted: anonymous, not "mallory".
    assert_eq!(denied[5]["actor"]["kind"], "anonymous");
    assert_eq!(denied[5]["details"]["reason"], "invalid_token");
    assert_eq!(denied[5]["resource"], "GET /api/activity");

    // The chain of events and refusals verifies.
    let verified = app.get(Some(&officer), "/api/audit/verify").await.expect(200);
    assert_eq!(verified, json!({"ok": true, "records": 9}));

    // The activity of the payment, for humans.
    let activity = app.get(Some(&officer), "/api/activity?payment_id=p-1").await.expect(200);
    let entries = activity["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2]["document"]["amount"], "2.50 EUR");
    assert_eq!(entries[2]["summary"], "alice paid 2.50 EUR to account 0191-b: completed");
}

fn entry(actor: AuditActor, action: &str, resource: &str, at_ms: i64) -> NewAuditEntry {
    NewAuditEntry::new(
        Uuid::now_v7(),
        at_ms,
        actor,
        AuditAction::parse(action).unwrap(),
        resource,
        AuditOutcome::Success,
        json!({}),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_pages_and_refuses_bad_filters() {
    let app = AuditApp::start(false).await;
    let alice = AuditActor::subject("alice").unwrap();
    let worker = AuditActor::service("payment-worker").unwrap();
    // 2025-01-01T00:00:00Z + i minutes.
    let base_ms = 1_735_689_600_000_i64;
    for i in 0..12_i64 {
        let actor = if i % 3 == 0 { worker.clone() } else { alice.clone() };
        let action = if i % 2 == 0 { "transaction.created" } else { "transfer.posted" };
        let resource = format!("payment:p-{}", i % 4);
        app.log.append(entry(actor, action, &resource, base_ms + i * 60_000)).await.unwrap();
    }
    let officer = app.token("officer-1", COMPLIANCE);
    let seqs = |page: &Value| -> Vec<u64> {
        page["records"].as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect()
    };
    // Pages of 5 by cursor: every record once, in order.
    let mut all = Vec::new();
    let mut path = "/api/audit?limit=5".to_owned();
    loop {
        let page = app.get(Some(&officer), &path).await.expect(200);
        assert!(seqs(&page).len() <= 5);
        all.extend(seqs(&page));
        match page["next_after"].as_u64() {
            Some(after) => path = format!("/api/audit?limit=5&after={after}"),
            None => break,
        }
    }
    assert_eq!(all, (1..=12).collect::<Vec<_>>());

    let get = |query: &str| {
        let path = format!("/api/audit?{query}");
        let app = &app;
        let officer = officer.clone();
        async move { app.get(Some(&officer), &path).await }
    };
    let page = get("actor=service:payment-worker").await.expect(200);
    assert_eq!(seqs(&page), [1, 4, 7, 10]);
    let page = get("actor=alice&action=transfer.posted").await.expect(200);
    assert_eq!(seqs(&page), [2, 6, 8, 12]);
    let page = get("actor=subject:alice&resource=payment:p-1").await.expect(200);
    assert_eq!(seqs(&page), [2, 6]);
    let page = get("from=2025-01-01T00:03:00Z&until=2025-01-01T01:06:00%2B01:00").await.expect(200);
    assert_eq!(seqs(&page), [4, 5, 6]);
    let page = get("action=access.denied").await.expect(200);
    assert!(seqs(&page).is_empty());

    get("from=yesterday").await.expect_problem(400, "invalid_query");
    get("action=Not-An-Action").await.expect_problem(400, "invalid_query");
    get("after=abc").await.expect_problem(400, "invalid_query");
    get("colour=blue").await.expect_problem(400, "invalid_query");
    get("actor=subject:").await.expect_problem(400, "invalid_query");
    get("limit=0").await.expect_problem(422, "invalid_filter");
    get("limit=1001").await.expect_problem(422, "invalid_filter");
    get("from=2025-01-01T00:03:00Z&until=2025-01-01T00:03:00Z")
        .await
        .expect_problem(422, "invalid_filter");
    let activity = app.get(Some(&officer), "/api/activity?after=nope").await;
    activity.expect_problem(400, "invalid_query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_records_its_own_refusals_once() {
    let app = AuditApp::start(true).await;
    let officer = app.token("officer-1", COMPLIANCE);
    // Through the edge: the policy lets compliance officers reach the trail.
    app.get(Some(&officer), "/api/audit").await.expect(200);
    // The edge refuses a customer (403 RBAC), nobody (403: the API needs a token) and a
    // forged token (401), each recorded once, by the edge.
    let customer = app.token("bob", "customer");
    let refused = app.get(Some(&customer), "/api/audit").await;
    assert_eq!(refused.status.as_u16(), 403);
    assert_eq!(refused.text, "RBAC: access denied");
    assert_eq!(app.get(None, "/api/audit/verify").await.status.as_u16(), 403);
    let forged = app.idp.forge(&app.idp.claims("mallory", &[COMPLIANCE]));
    assert_eq!(app.get(Some(&forged), "/api/audit").await.status.as_u16(), 401);

    let denied = app.denied_records(3).await;
    assert_eq!(denied.len(), 3, "{denied:#?}");
    assert_eq!(denied[0]["actor"], json!({"kind": "subject", "id": "bob"}));
    assert_eq!(denied[0]["resource"], "GET /api/audit");
    assert_eq!(denied[0]["details"]["reason"], "RBAC: access denied");
    assert_eq!(denied[0]["details"]["layer"], "edge");
    assert_eq!(denied[1]["actor"]["kind"], "anonymous");
    assert_eq!(denied[1]["resource"], "GET /api/audit/verify");
    assert_eq!(denied[2]["actor"]["kind"], "anonymous");
    assert_eq!(denied[2]["details"]["status"], 401);
    assert_eq!(denied[2]["details"]["reason"], "Jwt verification fails");
}
