//! Notifications end to end: payment events published on an in-process bus, the real
//! router on a random port with bearer-token authentication, and a webhook receiver on
//! another port that checks every signature with its own HMAC (not ferrobank's), answers
//! 500 twice then 200, and records what it got. Emails go to a real SMTP server
//! (`python3 -m aiosmtpd`, one per test on a port of its own, writing a maildir), and the
//! SSRF guard is checked with it off and on.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{Reply, TestIdp, client};
use ferrobank::config::{Config, DEFAULT_AUDIENCE};
use ferrobank_adapters::bus::{MemoryBus, MemoryBusOptions};
use ferrobank_adapters::idp::{IdentityProvider, ImportOptions};
use ferrobank_adapters::oidc::{OidcConfig, TokenValidator};
use ferrobank_adapters::testing::TestDatabase;
use ferrobank_adapters::{Backend, SqlStore};
use ferrobank_application::notifications::{
    DeliveryStatus, EmailDelivery, NotificationStore, WebhookEndpoint, generate_secret,
};
use ferrobank_application::{
    Clock, Event, EventBus, IdempotencyStore, LedgerLimits, LedgerService, NotificationService,
    SystemClock,
};
use ferrobank_interfaces::{AppState, HttpLimits, metrics_handle, router};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::task::JoinHandle;
use uuid::Uuid;

on_both_backends!(
    webhooks_are_signed_retried_logged_and_replayed_and_events_deduplicated,
    owners_see_only_their_own_and_bad_input_is_a_problem,
    emails_reach_the_owners_verified_address_once_per_event,
    emails_wait_out_an_smtp_outage_and_go_out_when_it_is_back,
    without_smtp_no_email_is_recorded_or_attempted,
    the_ssrf_guard_refuses_private_webhook_urls_and_connections,
    an_event_the_store_refuses_does_not_hold_back_the_others,
);

/// Longest a test waits for an effect.
const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `probe` until it returns `Some`, or fails the test after [`DEADLINE`].
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

/// A webhook endpoint: answers the scripted statuses in order, then 200.
#[derive(Debug, Clone, Default)]
struct Receiver {
    script: Arc<Mutex<Vec<u16>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(script: &[u16]) -> (Self, String) {
        let receiver = Self { script: Arc::new(Mutex::new(script.to_vec())), ..Self::default() };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let header = |name: &str| {
                        headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
                    };
                    state.received.lock().unwrap().push(Received {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body,
                    });
                    let mut script = state.script.lock().unwrap();
                    let status = if script.is_empty() { 200 } else { script.remove(0) };
                    (StatusCode::from_u16(status).unwrap(), "receiver says hi")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// The Standard Webhooks signature, computed here independently of ferrobank.
fn expected_signature(secret: &str, id: &str, timestamp: &str, body: &str) -> String {
    let key = BASE64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

#[test]
fn the_independent_signature_reproduces_the_standard_webhooks_test_vector() {
    let (secret, id, timestamp) =
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330");
    let body = r#"{"test": 2432232314}"#;
    let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(expected_signature(secret, id, timestamp, body), expected);
    let ours =
        ferrobank_interfaces::webhooks::sign(secret, id, 1_614_265_330, body.as_bytes()).unwrap();
    assert_eq!(ours, expected);
}

/// The API with notifications on, the bus, and tokens.
struct Harness {
    address: String,
    client: reqwest::Client,
    bus: Arc<MemoryBus>,
    store: SqlStore,
    service: NotificationService,
    idp: TestIdp,
    tasks: Vec<JoinHandle<()>>,
    _db: TestDatabase,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Harness {
    /// Webhooks to the test's local receivers: private addresses allowed.
    async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |config| {
            config.notifications.allow_private_webhook_urls = true;
        })
        .await
    }

    async fn start_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> Self {
        let idp = TestIdp::start().await;
        let db = TestDatabase::new(backend).await;
        let store = db.store().await;
        let mut config = Config::default();
        config.notifications.backoff_ms = vec![30, 60];
        config.notifications.max_attempts = 5;
        config.notifications.timeout_ms = 5_000;
        config.notifications.poll_interval_ms = 10;
        configure(&mut config);
        let bus = Arc::new(MemoryBus::new(MemoryBusOptions::default()).unwrap());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let (service, mut tasks) =
            ferrobank::notifications::start(&config, &store, bus.clone(), clock.clone())
                .await
                .unwrap();
        let sql = store.clone();
        let store = Arc::new(store);
        let (ledger, writer) =
            LedgerService::start(store.clone(), clock.clone(), LedgerLimits::default());
        tasks.push(writer);
        let oidc = OidcConfig::new(idp.issuer.clone(), vec![DEFAULT_AUDIENCE.to_owned()]);
        let idempotency: Arc<dyn IdempotencyStore> = store.clone();
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
            notifications: Some(service.clone()),
            audit: None,
            activity: None,
            audit_sink: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
        Self { address, client: client(), bus, store: sql, service, idp, tasks, _db: db }
    }

    fn token(&self, subject: &str, role: &str) -> String {
        self.idp.token(subject, &[role])
    }

    async fn send(&self, request: reqwest::RequestBuilder, token: &str) -> Reply {
        Reply::read(request.bearer_auth(token).send().await.unwrap()).await
    }

    async fn get(&self, token: &str, path: &str) -> Reply {
        self.send(self.client.get(format!("{}{path}", self.address)), token).await
    }

    async fn post(&self, token: &str, path: &str, body: &Value) -> Reply {
        self.send(self.client.post(format!("{}{path}", self.address)).json(body), token).await
    }

    async fn delete(&self, token: &str, path: &str) -> Reply {
        self.send(self.client.delete(format!("{}{path}", self.address)), token).await
    }

    async fn publish(&self, event: &Event) {
        self.bus.publish(event).await.unwrap();
    }
}

/// A payment event for `owner`, as the payment service publishes them.
fn payment_event(id: Uuid, type_: &str, owner: &str, status: &str) -> Event {
    let payment = Uuid::now_v7();
    Event::new(
        id,
        "/ferrobank/payments",
        type_,
        payment.to_string(),
        "2025-06-15T12:00:00.000Z",
        json!({
            "payment_id": payment, "owner": owner, "debtor_account": Uuid::now_v7(),
            "beneficiary": {"kind": "external", "iban": "DE89370400440532013000",
                            "name": "Erika Mustermann", "country": "DE"},
            "amount": 1234, "currency": "EUR", "reference": "invoice 42", "status": status,
            "failure_code": null, "created_at_ms": 1_750_000_000_000_i64,
            "updated_at_ms": 1_750_000_000_000_i64,
        }),
    )
}

async fn webhooks_are_signed_retried_logged_and_replayed_and_events_deduplicated(backend: Backend) {
    let app = Harness::start(backend).await;
    let alice = app.token("alice", "customer");
    let bob = app.token("bob", "customer");
    let (receiver, url) = Receiver::start(&[500, 500]).await;

    let created = app
        .post(
            &alice,
            "/api/webhooks",
            &json!({"url": url, "event_types": ["transaction.completed"]}),
        )
        .await;
    let endpoint = created.expect(201);
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(BASE64.decode(&secret["whsec_".len()..]).unwrap().len(), 24);
    let endpoint_id = endpoint["id"].as_str().unwrap().to_owned();
    assert_eq!(created.header("location").unwrap(), format!("/api/webhooks/{endpoint_id}"));
    let shown = app.get(&alice, &format!("/api/webhooks/{endpoint_id}")).await.expect(200);
    assert!(shown.get("secret").is_none(), "the secret is shown once: {shown}");

    let completed = payment_event(Uuid::now_v7(), "transaction.completed", "alice", "completed");
    app.publish(&completed).await;

    // Two 500s, then delivered: three requests of one message, each freshly signed.
    let got = eventually("three attempts", || async {
        let got = receiver.received();
        (got.len() >= 3).then_some(got)
    })
    .await;
    for request in &got {
        assert_eq!(request.id, got[0].id, "webhook-id is stable across retries");
        assert_eq!(
            request.signature,
            expected_signature(&secret, &request.id, &request.timestamp, &request.body)
        );
        let timestamp: i64 = request.timestamp.parse().unwrap();
        assert!((now_s() - timestamp).abs() < 60, "webhook-timestamp is this attempt's time");
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body["type"], "transaction.completed");
        assert_eq!(body["timestamp"], "2025-06-15T12:00:00.000Z");
        assert_eq!(body["data"], completed.data);
    }
    let deliveries_path = format!("/api/webhooks/{endpoint_id}/deliveries");
    let delivery = eventually("the delivery is delivered", || async {
        let page = app.get(&alice, &deliveries_path).await.expect(200);
        let delivery = page["items"][0].clone();
        (delivery["status"] == "delivered").then_some(delivery)
    })
    .await;
    assert_eq!(delivery["message_id"], got[0].id.as_str());
    assert_eq!(delivery["attempts"], 3);
    let codes: Vec<&Value> =
        delivery["log"].as_array().unwrap().iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(500), &json!(500), &json!(200)]);
    assert_eq!(delivery["log"][0]["response_prefix"], "receiver says hi");
    assert!(delivery["log"][2]["duration_ms"].is_u64());

    // The same event again (a redelivery), then a marker event of the same subject: once
    // the marker is in the inbox the redelivery was handled, and it created nothing.
    app.publish(&completed).await;
    let marker = Event {
        id: Uuid::now_v7().to_string(),
        type_: "transaction.failed".into(),
        ..completed.clone()
    };
    app.publish(&marker).await;
    let inbox = eventually("the marker notification", || async {
        let inbox = app.get(&alice, "/api/notifications").await.expect(200);
        (inbox["items"][0]["type"] == "transaction.failed").then_some(inbox)
    })
    .await;
    assert_eq!(inbox["items"].as_array().unwrap().len(), 2, "one notification per event: {inbox}");
    assert_eq!(inbox["items"][1]["title"], "Payment completed: 12.34 EUR");
    let page = app.get(&alice, &deliveries_path).await.expect(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "one delivery per event: {page}");
    assert_eq!(receiver.received().len(), 3, "nothing sent again");

    // Replay: a new series of the same message.
    let delivery_id = delivery["id"].as_str().unwrap();
    let replay_path = format!("{deliveries_path}/{delivery_id}/replay");
    let replayed = app.post(&alice, &replay_path, &json!({})).await.expect(202);
    assert_eq!(replayed["series"], 2);
    let got = eventually("the replayed request", || async {
        let got = receiver.received();
        (got.len() >= 4).then_some(got)
    })
    .await;
    let last = &got[3];
    assert_eq!(last.id, got[0].id, "a replay keeps the webhook-id");
    assert_eq!(last.body, got[0].body);
    assert_eq!(last.signature, expected_signature(&secret, &last.id, &last.timestamp, &last.body));
    let delivery = eventually("the replay is delivered", || async {
        let page = app.get(&alice, &deliveries_path).await.expect(200);
        let delivery = page["items"][0].clone();
        (delivery["status"] == "delivered" && delivery["series"] == 2).then_some(delivery)
    })
    .await;
    let log: Vec<(u64, u64)> = delivery["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["series"].as_u64().unwrap(), a["attempt"].as_u64().unwrap()))
        .collect();
    assert_eq!(log, [(1, 1), (1, 2), (1, 3), (2, 1)]);

    // The inbox: unread filter, mark read, pagination, and only one's own.
    let unread = app.get(&alice, "/api/notifications?unread=true").await.expect(200);
    assert_eq!(unread["items"].as_array().unwrap().len(), 2);
    let first = unread["items"][0]["id"].as_str().unwrap().to_owned();
    let read = app.post(&alice, &format!("/api/notifications/{first}/read"), &json!({})).await;
    assert!(read.expect(200)["read_at_ms"].is_i64());
    let unread = app.get(&alice, "/api/notifications?unread=true").await.expect(200);
    assert_eq!(unread["items"].as_array().unwrap().len(), 1);
    let page = app.get(&alice, "/api/notifications?limit=1").await.expect(200);
    assert_eq!(page["items"][0]["id"], first.as_str());
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = app.get(&alice, &format!("/api/notifications?limit=1&after={cursor}")).await;
    let rest = rest.expect(200);
    assert_eq!(rest["items"][0]["type"], "transaction.completed");
    assert_eq!(rest["next_cursor"], Value::Null);
    let theirs = app.get(&bob, "/api/notifications").await.expect(200);
    assert_eq!(theirs["items"], json!([]));
    app.post(&bob, &format!("/api/notifications/{first}/read"), &json!({}))
        .await
        .expect_problem(404, "not_found");
}

async fn owners_see_only_their_own_and_bad_input_is_a_problem(backend: Backend) {
    let app = Harness::start(backend).await;
    let alice = app.token("alice", "customer");
    let bob = app.token("bob", "customer");
    let admin = app.token("root", "banking-admin");
    let (_receiver, url) = Receiver::start(&[]).await;
    let endpoint = app.post(&alice, "/api/webhooks", &json!({"url": url})).await.expect(201);
    let id = endpoint["id"].as_str().unwrap();
    assert_eq!(endpoint["event_types"].as_array().unwrap().len(), 6, "all types by default");

    // Someone else's endpoint does not exist for bob; the admin sees it.
    let path = format!("/api/webhooks/{id}");
    app.get(&bob, &path).await.expect_problem(404, "not_found");
    app.get(&bob, &format!("{path}/deliveries")).await.expect_problem(404, "not_found");
    app.delete(&bob, &path).await.expect_problem(404, "not_found");
    let replay = format!("{path}/deliveries/{}/replay", Uuid::now_v7());
    app.post(&bob, &replay, &json!({})).await.expect_problem(404, "not_found");
    assert_eq!(app.get(&bob, "/api/webhooks").await.expect(200)["items"], json!([]));
    app.get(&bob, "/api/webhooks?owner=alice").await.expect_problem(403, "forbidden");
    assert_eq!(app.get(&admin, &path).await.expect(200)["owner"], "alice");
    let listed = app.get(&admin, "/api/webhooks?owner=alice").await.expect(200);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // Documented: every operation in the OpenAPI document under the `notifications` tag.
    let doc = app.get(&alice, "/api/openapi.json").await.expect(200);
    for path in [
        "/api/notifications",
        "/api/notifications/{id}/read",
        "/api/webhooks",
        "/api/webhooks/{id}",
        "/api/webhooks/{id}/deliveries",
        "/api/webhooks/{id}/deliveries/{delivery_id}/replay",
    ] {
        let item = doc["paths"][path].as_object().unwrap_or_else(|| panic!("{path} undocumented"));
        assert!(item.values().all(|op| op["tags"] == json!(["notifications"])), "{path}");
    }

    // Bad URLs and bodies are 422 problems, never 500.
    let long = format!("https://example.com/{}", "a".repeat(2_100));
    for bad in [
        "ftp://example.com/x",
        "https://u:p@example.com/x",
        "https://example.com/x#frag",
        "not a url",
        long.as_str(),
        "https://",
    ] {
        let reply = app.post(&alice, "/api/webhooks", &json!({"url": bad})).await;
        reply.expect_problem(422, "invalid_webhook_url");
    }
    let reply = app
        .post(&alice, "/api/webhooks", &json!({"url": url, "event_types": ["account.opened"]}))
        .await;
    reply.expect_problem(422, "invalid_event_types");
    let reply = app.post(&alice, "/api/webhooks", &json!({"url": url, "color": "red"})).await;
    reply.expect_problem(422, "invalid_body");
    app.get(&alice, "/api/notifications?after=nope").await.expect_problem(400, "invalid_query");
    app.get(&alice, "/api/notifications?limit=0").await.expect_problem(400, "invalid_query");
    app.get(&alice, "/api/webhooks/not-a-uuid").await.expect_problem(404, "not_found");

    // Idempotency-Key: the retry gets the first answer (the same endpoint and secret).
    let body = json!({"url": url, "description": "retried"});
    let send = || {
        app.client
            .post(format!("{}/api/webhooks", app.address))
            .bearer_auth(&alice)
            .header("idempotency-key", "create-hook-1")
            .json(&body)
            .send()
    };
    let first = Reply::read(send().await.unwrap()).await.expect(201);
    let again = Reply::read(send().await.unwrap()).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.expect(201)["secret"], first["secret"]);

    // At most ten active endpoints; deleting one frees its slot.
    for _ in 0..8 {
        app.post(&alice, "/api/webhooks", &json!({"url": url})).await.expect(201);
    }
    app.post(&alice, "/api/webhooks", &json!({"url": url}))
        .await
        .expect_problem(422, "too_many_webhooks");
    assert_eq!(app.delete(&alice, &path).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.delete(&alice, &path).await.status, StatusCode::NO_CONTENT, "idempotent");
    assert_eq!(app.get(&alice, &path).await.expect(200)["active"], false);
    app.post(&alice, "/api/webhooks", &json!({"url": url})).await.expect(201);

    // An event that can never be a payment goes to the dead-letter queue.
    let mut poison = payment_event(Uuid::now_v7(), "transaction.created", "alice", "pending");
    poison.data = json!({"payment_id": Uuid::now_v7()});
    app.publish(&poison).await;
    let bus = app.bus.clone();
    let dead = eventually("the poison event dead-lettered", || {
        let bus = bus.clone();
        async move {
            let dead = bus.dead_letters("notifications", 10).await.unwrap();
            (!dead.is_empty()).then_some(dead)
        }
    })
    .await;
    assert_eq!(dead[0].event.as_ref().unwrap().id, poison.id);
}

/// Events delivered together are recorded in one transaction; when the store refuses that
/// transaction because of one event, the others are still recorded (each on its own).
async fn an_event_the_store_refuses_does_not_hold_back_the_others(backend: Backend) {
    let app = Harness::start(backend).await;
    // PostgreSQL cannot store a NUL character in text (SQLite can: there it is recorded).
    let mut refused = payment_event(Uuid::now_v7(), "transaction.created", "alice", "pending");
    refused.data["payment_id"] = json!("nul\u{0}");
    let good: Vec<Event> = (0..3)
        .map(|_| payment_event(Uuid::now_v7(), "transaction.created", "alice", "pending"))
        .collect();
    // A bus of the test's own, so that the four arrive as one batch (the app's consumer
    // might take them one by one).
    let bus = MemoryBus::new(MemoryBusOptions::default()).unwrap();
    let mut subscription = bus.subscribe("probe", &["transaction.created"]).await.unwrap();
    let together = [good[0].clone(), refused.clone(), good[1].clone(), good[2].clone()];
    for published in bus.publish_all(&together).await {
        published.unwrap();
    }
    let (batch, ended) = subscription.next_batch(10).await.unwrap();
    assert!(ended.is_none());
    assert_eq!(batch.len(), 4, "one batch");
    ferrobank::notifications::settle_batch(&app.service, batch).await;

    let page = app.store.notifications("alice", false, None, 10).await.unwrap();
    let recorded: BTreeSet<String> = page.items.into_iter().map(|n| n.event_id).collect();
    assert!(good.iter().all(|e| recorded.contains(&e.id)), "{recorded:?}");
    assert_eq!(recorded.contains(&refused.id), backend == Backend::Sqlite, "{recorded:?}");
}

/// Seconds since the Unix epoch.
fn now_s() -> i64 {
    let elapsed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(elapsed.as_secs()).unwrap()
}

/// A real SMTP server: `python3 -m aiosmtpd` on a port of its own, writing what it
/// accepts to a maildir; killed when dropped.
struct SmtpServer {
    child: std::process::Child,
    maildir: std::path::PathBuf,
}

impl SmtpServer {
    /// A port nothing listens on (yet).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    async fn start(port: u16) -> Self {
        let maildir = std::env::temp_dir().join(format!("ferrobank-smtp-{}", Uuid::now_v7()));
        let python = std::env::var("FERROBANK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let child = std::process::Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (pip install aiosmtpd; scripts/test.sh installs it)");
        let server = Self { child, maildir };
        eventually("the SMTP server listening", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()
        })
        .await;
        server
    }

    /// The messages it accepted, CRLF as LF.
    fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .map(|entry| {
                std::fs::read_to_string(entry.unwrap().path()).unwrap().replace("\r\n", "\n")
            })
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.maildir);
    }
}

/// A header of a message as the maildir has it.
fn header<'m>(message: &'m str, name: &str) -> Option<&'m str> {
    let head = message.split("\n\n").next()?;
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The built-in provider's realm in the test's database: alice with a verified address,
/// bob without one. Returns their ids (their tokens' subjects).
async fn users(store: &SqlStore) -> (String, String) {
    let idp = IdentityProvider::load(store.clone(), Arc::new(SystemClock), "http://127.0.0.1:1")
        .await
        .unwrap();
    let realm = json!({
        "realm": "banking", "enabled": true, "defaultSignatureAlgorithm": "EdDSA",
        "bruteForceProtected": true,
        "users": [
            {"username": "alice", "enabled": true, "email": "alice@example.com", "emailVerified": true},
            {"username": "bob", "enabled": true},
        ],
    });
    let model = ferrobank::identity::parse_realm(&realm.to_string(), "test realm").unwrap();
    idp.import_realm(&model, &ImportOptions::default(), false).await.unwrap();
    let state = idp.realm("banking").unwrap();
    (state.users["alice"].id.clone(), state.users["bob"].id.clone())
}

/// Emails on, through the SMTP server on `port`.
async fn with_smtp(
    backend: Backend,
    port: u16,
    max_attempts: u32,
    backoff_ms: Vec<u64>,
) -> Harness {
    Harness::start_with(backend, |config| {
        config.notifications.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
        config.notifications.email_from = Some("ferrobank <payments@bank.example>".into());
        config.notifications.max_attempts = max_attempts;
        config.notifications.backoff_ms = backoff_ms;
    })
    .await
}

impl Harness {
    /// The email of `event` to `owner` once `done` holds for it.
    async fn email(
        &self,
        owner: &str,
        event: &Event,
        what: &str,
        done: impl Fn(&EmailDelivery) -> bool,
    ) -> EmailDelivery {
        eventually(what, || async {
            self.service.email_delivery(owner, &event.id).await.unwrap().filter(|e| done(e))
        })
        .await
    }
}

async fn emails_reach_the_owners_verified_address_once_per_event(backend: Backend) {
    let port = SmtpServer::free_port();
    let smtp = SmtpServer::start(port).await;
    let app = with_smtp(backend, port, 5, vec![30, 60]).await;
    let (alice, bob) = users(&app.store).await;

    let mut completed = payment_event(Uuid::now_v7(), "transaction.completed", &alice, "completed");
    completed.data["amount"] = json!(2500);
    app.publish(&completed).await;
    let messages = eventually("the email", || async {
        let messages = smtp.messages();
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    let message = &messages[0];
    assert_eq!(header(message, "From"), Some("ferrobank <payments@bank.example>"), "{message}");
    assert_eq!(header(message, "To"), Some("alice@example.com"), "{message}");
    assert_eq!(header(message, "Subject"), Some("Payment completed: 25.00 EUR"), "{message}");
    assert!(header(message, "Content-Type").is_some_and(|t| t.starts_with("text/plain")));
    let body = message.split_once("\n\n").unwrap().1;
    assert!(body.starts_with("Payment completed: 25.00 EUR\n"), "{body}");
    assert!(body.contains("Reference: invoice 42\n") && body.contains("Status: completed\n"));
    let sent = app
        .email(&alice, &completed, "the email delivered", |e| e.status == DeliveryStatus::Delivered)
        .await;
    assert_eq!(sent.attempts, 1);
    assert_eq!(sent.recipient.as_deref(), Some("alice@example.com"));
    let message_id = format!("<{}@ferrobank>", sent.id.simple());
    assert_eq!(header(message, "Message-ID"), Some(message_id.as_str()));

    // The same event again, then one for bob: once bob's is recorded (skipped: he has no
    // address) the redelivery was handled, and it sent nothing.
    app.publish(&completed).await;
    let for_bob = payment_event(Uuid::now_v7(), "transaction.completed", &bob, "completed");
    app.publish(&for_bob).await;
    let skipped = app
        .email(&bob, &for_bob, "bob's email skipped", |e| e.status == DeliveryStatus::Skipped)
        .await;
    assert_eq!(skipped.recipient, None);
    assert_eq!(skipped.attempts, 0);
    assert_eq!(skipped.last_error.as_deref(), Some("the user has no email address"));
    let again = app.service.email_delivery(&alice, &completed.id).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (sent.id, 1), "one row per event, attempted once");
    assert_eq!(smtp.messages().len(), 1, "nothing sent again");
}

async fn emails_wait_out_an_smtp_outage_and_go_out_when_it_is_back(backend: Backend) {
    let port = SmtpServer::free_port();
    let app = with_smtp(backend, port, 50, vec![50, 200]).await;
    let (alice, _) = users(&app.store).await;
    let event = payment_event(Uuid::now_v7(), "transaction.failed", &alice, "failed");
    app.publish(&event).await;
    let waiting = app.email(&alice, &event, "a failed attempt", |e| e.attempts >= 2).await;
    assert_eq!(waiting.status, DeliveryStatus::Pending, "retried, not given up");
    assert!(waiting.last_error.is_some(), "the refusal is recorded: {waiting:?}");

    let smtp = SmtpServer::start(port).await;
    let sent = app
        .email(&alice, &event, "the email delivered", |e| e.status == DeliveryStatus::Delivered)
        .await;
    assert!(sent.attempts > waiting.attempts);
    assert_eq!(sent.last_error, None);
    let messages = eventually("the email", || async {
        let messages = smtp.messages();
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    assert_eq!(messages.len(), 1);
    assert_eq!(header(&messages[0], "Subject"), Some("Payment failed: 12.34 EUR"));
}

async fn without_smtp_no_email_is_recorded_or_attempted(backend: Backend) {
    let port = SmtpServer::free_port();
    let smtp = SmtpServer::start(port).await;
    let app = Harness::start(backend).await;
    assert!(!app.service.email_enabled());
    let (alice, _) = users(&app.store).await;
    let token = app.token(&alice, "customer");
    let event = payment_event(Uuid::now_v7(), "transaction.completed", &alice, "completed");
    app.publish(&event).await;
    eventually("the in-app notification", || async {
        let inbox = app.get(&token, "/api/notifications").await.expect(200);
        (inbox["items"][0]["type"] == "transaction.completed").then_some(())
    })
    .await;
    assert_eq!(app.service.email_delivery(&alice, &event.id).await.unwrap(), None);
    assert!(smtp.messages().is_empty());
}

async fn the_ssrf_guard_refuses_private_webhook_urls_and_connections(backend: Backend) {
    let app = Harness::start_with(backend, |_| {}).await;
    let alice = app.token("alice", "customer");
    let (receiver, url) = Receiver::start(&[]).await;
    for private in [
        url.as_str(),
        "http://localhost:9999/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://[::1]:9999/hook",
        "http://[fd12::1]/hook",
        "http://0.0.0.0:9999/hook",
    ] {
        let reply = app.post(&alice, "/api/webhooks", &json!({"url": private})).await;
        reply.expect_problem(422, "webhook_url_not_allowed");
    }
    app.post(&alice, "/api/webhooks", &json!({"url": "https://hooks.example.com/in"}))
        .await
        .expect(201);

    // Registered while allowed (or before the guard): no connection is made, and the log
    // says why. Names resolving there later (DNS rebinding) are refused by the resolver
    // (the webhooks module's tests).
    let port = url.trim_start_matches("http://127.0.0.1:").trim_end_matches("/hook");
    for (url, why) in [
        (format!("http://localhost:{port}/hook"), "refused: localhost is a loopback name"),
        (url.clone(), "refused: 127.0.0.1 is a loopback, private or link-local address"),
    ] {
        let endpoint = WebhookEndpoint {
            id: Uuid::now_v7(),
            owner: "alice".into(),
            url,
            event_types: vec!["transaction.completed".into()],
            description: None,
            secret: generate_secret(),
            created_at_ms: 1,
            disabled_at_ms: None,
        };
        assert!(app.store.insert_endpoint(&endpoint, 10).await.unwrap());
        let event = payment_event(Uuid::now_v7(), "transaction.completed", "alice", "completed");
        app.publish(&event).await;
        let path = format!("/api/webhooks/{}/deliveries", endpoint.id);
        let delivery = eventually("the delivery failed", || async {
            let page = app.get(&alice, &path).await.expect(200);
            let delivery = page["items"][0].clone();
            (delivery["status"] == "failed").then_some(delivery)
        })
        .await;
        assert_eq!(delivery["attempts"], 5);
        for attempt in delivery["log"].as_array().unwrap() {
            assert_eq!(attempt["status_code"], Value::Null);
            let error = attempt["error"].as_str().unwrap();
            assert!(error.contains(why), "{error}");
        }
        app.delete(&alice, &format!("/api/webhooks/{}", endpoint.id)).await;
    }
    assert!(receiver.received().is_empty(), "no request reached the private address");
}
