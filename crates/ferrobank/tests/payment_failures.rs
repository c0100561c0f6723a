//! The money path under failure, with real processes and real brokers: the API
//! (`serve accounts`), the payment worker (`serve payment-worker`) and the gateway
//! simulator (`serve psp-sim`) run as child processes of this test over PostgreSQL
//! (`TEST_PG_ADMIN_URL`) and RabbitMQ (`FERROBANK_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`); `scripts/test.sh` starts both, and a broker
//! or database that is not there fails the tests. Each test has its own database, its
//! own RabbitMQ prefix (its queues and exchange are deleted at the end) and its own ports.
//!
//! What is checked is what a customer and the bank would notice: every payment ends in
//! exactly one final state, nobody is charged twice (the simulator counts charges per
//! Idempotency-Key), the ledger verifies and the balances match the completed payments,
//! whether the worker is killed with -9, the broker goes away, the gateway fails and
//! hangs, or the same event is delivered many times.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Rng, client, ferrobank, poll_until};
use ferrobank_adapters::bus::{RabbitBus, RabbitBusOptions};
use ferrobank_adapters::testing::TestDatabase;
use ferrobank_application::bus::{Event, EventBus, RetryPolicy, rfc3339_from_unix_ms};
use ferrobank_application::payments::PaymentService;
use ferrobank_domain::Currency;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use uuid::Uuid;

/// Longest a process may take to print its address and answer `/ready`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the payments of a test may take to reach a final state.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `ferrobank ledger verify` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the test waits for an effect on the bus (a captured event, a dead letter).
const BUS_TIMEOUT: Duration = Duration::from_secs(20);
/// The worker's consumer name on the bus.
const WORKER: &str = ferrobank_application::payments::WORKER_CONSUMER;
/// The worker's label on the bus metrics.
const WORKER_LABEL: &str = "consumer=\"payment-worker\"";
/// The test's own consumer, which captures what the relay publishes.
const CAPTURE: &str = "pf-capture";
/// A valid IBAN (the checksum is verified at the edge).
const IBAN: &str = "DE89 3704 0044 0532 0130 00";
/// What each debtor account is funded with, in cents.
const FUNDING_MINOR: i64 = 10_000_000;
/// Bus retries: fast, so redeliveries come back within a test. The cleanup uses the same
/// policy, since the names of the delay queues carry the backoffs.
const BUS_RETRY: RetryPolicy =
    RetryPolicy { max_attempts: 5, initial_backoff_ms: 50, max_backoff_ms: 400 };

fn amqp_url() -> String {
    std::env::var("FERROBANK_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A bus on the test's prefix, straight to the broker (not through any proxy).
async fn rabbit(prefix: &str) -> RabbitBus {
    let url = amqp_url();
    let options = RabbitBusOptions {
        prefix: prefix.to_owned(),
        retry: BUS_RETRY,
        ..RabbitBusOptions::default()
    };
    RabbitBus::connect(&url, options).await.unwrap_or_else(|e| {
        panic!(
            "RabbitMQ is not reachable at {url} ({e}). Start it (./scripts/test.sh does: \
             rabbitmq-server -detached) or point FERROBANK_TEST_AMQP_URL at one."
        )
    })
}

/// One child process of the binary; killed (-9) and reaped when dropped.
struct Process {
    name: &'static str,
    child: Child,
    /// `http://127.0.0.1:PORT`
    address: String,
    log: PathBuf,
}

impl Process {
    /// `kill -9`, and waits until it is gone.
    async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        let status = tokio::time::timeout(COMMAND_TIMEOUT, self.child.wait()).await.unwrap();
        assert!(!status.unwrap().success(), "{} was killed, not stopped", self.name);
    }

    fn tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Reaped here so that nothing of the test outlives it (and re-declares queues
        // after the cleanup deleted them).
        let _ = self.child.start_kill();
        let give_up = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(6_000);
    let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    text[start..].to_owned()
}

/// Deletes the test's queues and exchange on the broker when dropped (also on failure).
struct BrokerCleanup {
    prefix: String,
}

impl Drop for BrokerCleanup {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        // Drop cannot await and the test's runtime may be going away: a thread with a
        // runtime and a connection of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let options =
                    RabbitBusOptions { prefix, retry: BUS_RETRY, ..RabbitBusOptions::default() };
                let bus = RabbitBus::connect(&amqp_url(), options).await?;
                // Every consumer the processes subscribe, and the test's own.
                let consumers = [
                    WORKER,
                    ferrobank_application::AUDIT_CONSUMER,
                    ferrobank_application::notifications::CONSUMER,
                    CAPTURE,
                ];
                for consumer in consumers {
                    bus.delete_consumer(consumer).await?;
                }
                bus.teardown().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("could not delete the test's RabbitMQ queues: {e}");
        }
    }
}

/// Removes the scratch directory (logs) when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// How one test runs the processes.
#[derive(Debug, Clone, Default)]
struct Setup {
    /// `[psp_sim]` knobs of the simulator process (`("LATENCY_MS", "20")`).
    sim: Vec<(&'static str, String)>,
    /// Settings of the API and worker processes (`("PAYMENTS__STALE_AFTER_MS", "2000")`).
    services: Vec<(&'static str, String)>,
    /// Settings of the worker process only.
    worker: Vec<(&'static str, String)>,
    /// The AMQP URL the processes use (a proxy's); default: the broker's.
    amqp_url: Option<String>,
}

/// The HTTP side of the API process; cheap to clone into load tasks.
#[derive(Debug, Clone)]
struct Api {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT`
    address: String,
}

impl Api {
    async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.address)).json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> Value {
        get_json(&self.http, &format!("{}{path}", self.address)).await
    }

    async fn open_account(&self, no_overdraft: bool) -> Uuid {
        let id = Uuid::now_v7();
        let body = json!({
            "id": id, "currency": "EUR", "owner": format!("customer-{}", id.simple()),
            "flags": { "debits_must_not_exceed_credits": no_overdraft },
        });
        let (status, account) = self.post("/api/accounts", None, &body).await;
        assert_eq!(status, 201, "{account}");
        id
    }

    /// A bank account (`funder`), `debtors` customer accounts without overdraft funded
    /// from it with [`FUNDING_MINOR`] each, and `beneficiaries` internal accounts.
    async fn accounts(&self, debtors: usize, beneficiaries: usize) -> Accounts {
        let funder = self.open_account(false).await;
        let mut accounts = Accounts { funder, debtors: Vec::new(), beneficiaries: Vec::new() };
        for _ in 0..debtors {
            let debtor = self.open_account(true).await;
            let body = json!({
                "id": Uuid::now_v7(), "debit_account_id": funder, "credit_account_id": debtor,
                "amount": FUNDING_MINOR, "currency": "EUR",
            });
            let (status, transfer) = self.post("/api/transfers", None, &body).await;
            assert_eq!(status, 201, "{transfer}");
            accounts.debtors.push(debtor);
        }
        for _ in 0..beneficiaries {
            accounts.beneficiaries.push(self.open_account(false).await);
        }
        accounts
    }

    /// `POST /api/payments` with a fresh Idempotency-Key: the status and the body.
    async fn submit(&self, spec: &Spec) -> (u16, Value) {
        self.post("/api/payments", Some(&format!("pf-{}", Uuid::new_v4())), &spec.body()).await
    }

    /// Submits `spec`; it must be accepted (201, pending).
    async fn submit_ok(&self, spec: &Spec) -> Sent {
        let (status, payment) = self.submit(spec).await;
        assert_eq!(status, 201, "POST /api/payments: {payment}");
        assert_eq!(payment["status"], "pending", "not accepted as is: {payment}");
        Sent {
            id: Uuid::parse_str(payment["payment_id"].as_str().unwrap()).unwrap(),
            spec: spec.clone(),
        }
    }

    /// Every payment as it is now, by id, following the cursor.
    async fn payments(&self) -> HashMap<Uuid, Value> {
        let mut all = HashMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/payments?limit=200&cursor={c}"),
                None => "/api/payments?limit=200".to_owned(),
            };
            let page = self.get(&path).await;
            for payment in page["payments"].as_array().unwrap() {
                let id = Uuid::parse_str(payment["payment_id"].as_str().unwrap()).unwrap();
                all.insert(id, payment.clone());
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return all,
            }
        }
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let response = http.get(url).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "GET {url}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

/// The accounts of a test.
#[derive(Debug, Clone)]
struct Accounts {
    /// The bank account the debtors were funded from.
    funder: Uuid,
    /// Customer accounts payments are made from.
    debtors: Vec<Uuid>,
    /// Internal accounts payments are made to.
    beneficiaries: Vec<Uuid>,
}

/// A payment to make.
#[derive(Debug, Clone)]
struct Spec {
    debtor: Uuid,
    /// An internal account, or `None`: the external IBAN.
    beneficiary: Option<Uuid>,
    amount: i64,
}

impl Spec {
    fn body(&self) -> Value {
        let beneficiary = match self.beneficiary {
            Some(account) => json!({ "kind": "internal", "account": account }),
            None => json!({ "kind": "external", "iban": IBAN, "name": "Carol", "country": "DE" }),
        };
        json!({
            "debtor_account": self.debtor,
            "beneficiary": beneficiary,
            "amount": self.amount,
            "currency": "EUR",
            "reference": "pf test",
        })
    }
}

/// A payment the API accepted.
#[derive(Debug, Clone)]
struct Sent {
    id: Uuid,
    spec: Spec,
}

/// Random payments from the debtors, about one in three to an internal beneficiary, all
/// below every risk threshold (a new beneficiary is reviewed above 1,000.00).
fn random_spec(rng: &mut Rng, accounts: &Accounts) -> Spec {
    Spec {
        debtor: *rng.pick(&accounts.debtors),
        beneficiary: (rng.below(3) == 0).then(|| *rng.pick(&accounts.beneficiaries)),
        amount: i64::try_from(100 + rng.below(900)).unwrap(),
    }
}

/// Submits `count` random payments from `clients` concurrent clients; each must be
/// accepted. Returns what was sent.
async fn submit_all(api: &Api, accounts: &Accounts, count: usize, clients: usize) -> Vec<Sent> {
    let mut rng = Rng::new(count as u64);
    let specs: Vec<Spec> = (0..count).map(|_| random_spec(&mut rng, accounts)).collect();
    let queue = Arc::new(Mutex::new(specs));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (api, queue) = (api.clone(), queue.clone());
            tokio::spawn(async move {
                let mut sent = Vec::new();
                loop {
                    let Some(spec) = queue.lock().unwrap().pop() else { return sent };
                    sent.push(api.submit_ok(&spec).await);
                }
            })
        })
        .collect();
    let mut sent = Vec::new();
    for task in tasks {
        sent.extend(task.await.unwrap());
    }
    sent
}

/// How many of `ids` are in each status.
fn statuses<'a>(
    payments: &HashMap<Uuid, Value>,
    ids: impl IntoIterator<Item = &'a Uuid>,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        let status = payments.get(id).and_then(|p| p["status"].as_str()).unwrap_or("missing");
        *counts.entry(status.to_owned()).or_default() += 1;
    }
    counts
}

fn is_final(payment: Option<&Value>) -> bool {
    matches!(payment.and_then(|p| p["status"].as_str()), Some("completed" | "failed"))
}

/// The sum of a Prometheus metric's samples whose labels contain each of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        // An empty sum is -0.0.
        .abs()
}

/// One test's world: a database, a broker prefix, and the three processes. Fields drop in
/// declaration order: the processes first, then the broker's queues, the database, the logs.
struct Stack {
    api_process: Process,
    worker: Option<Process>,
    sim: Process,
    api: Api,
    setup: Setup,
    prefix: String,
    _broker: BrokerCleanup,
    db: TestDatabase,
    dir: Scratch,
}

impl Stack {
    async fn start(setup: Setup) -> Stack {
        let db = TestDatabase::postgres().await;
        let prefix = format!("pf-{}", &Uuid::new_v4().simple().to_string()[..8]);
        // Fails the test at once, with a hint, when the broker is not there.
        rabbit(&prefix).await.teardown().await.unwrap();
        let broker = BrokerCleanup { prefix: prefix.clone() };
        let dir = std::env::temp_dir().join(format!("ferrobank-{prefix}"));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = Scratch(dir);
        let sim_env: Vec<(String, String)> =
            setup.sim.iter().map(|(k, v)| (format!("FERROBANK_PSP_SIM__{k}"), v.clone())).collect();
        let sim_args = ["serve", "psp-sim", "--listen", "127.0.0.1:0"];
        let sim =
            spawn_process("psp-sim", &sim_args, &sim_env, &dir.0, "ferrobank psp-sim is up on ")
                .await;
        // The API first: it migrates the schema that the worker then finds.
        let api_process = spawn_service("api", &setup, &prefix, &sim, &db, &dir.0).await;
        let worker = spawn_service(WORKER, &setup, &prefix, &sim, &db, &dir.0).await;
        let api = Api { http: client(), address: api_process.address.clone() };
        Stack {
            api_process,
            worker: Some(worker),
            sim,
            api,
            setup,
            prefix,
            _broker: broker,
            db,
            dir,
        }
    }

    fn worker(&mut self) -> &mut Process {
        self.worker.as_mut().unwrap()
    }

    /// Starts the worker again (after a kill).
    async fn restart_worker(&mut self) {
        let worker =
            spawn_service(WORKER, &self.setup, &self.prefix, &self.sim, &self.db, &self.dir.0)
                .await;
        self.worker = Some(worker);
    }

    fn logs(&self) -> String {
        let worker = self.worker.as_ref().map(Process::tail).unwrap_or_default();
        format!("worker log:\n{worker}\napi log:\n{}", self.api_process.tail())
    }

    /// Waits until every one of `ids` is completed or failed; all payments then.
    async fn settled(&self, ids: &[Uuid]) -> HashMap<Uuid, Value> {
        let give_up = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let payments = self.api.payments().await;
            if ids.iter().all(|id| is_final(payments.get(id))) {
                return payments;
            }
            if Instant::now() > give_up {
                let stuck: Vec<Uuid> =
                    ids.iter().filter(|id| !is_final(payments.get(id))).copied().collect();
                panic!(
                    "payments not final after {SETTLE_TIMEOUT:?}: {:?}\n{}\n{}",
                    statuses(&payments, ids),
                    self.diagnose(&stuck, &payments).await,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What the database and the broker know of payments that did not finish.
    async fn diagnose(&self, stuck: &[Uuid], payments: &HashMap<Uuid, Value>) -> String {
        use sqlx::{Connection, Row};
        let mut report = String::new();
        let Ok(mut db) = sqlx::PgConnection::connect(&self.db.url).await else {
            return "(database unreachable)".into();
        };
        for id in stuck.iter().take(10) {
            report
                .push_str(&format!("payment {id}: {}\n", payments.get(id).unwrap_or(&Value::Null)));
            let rows = sqlx::query(
                "SELECT o.seq, o.event_id, o.kind, o.created_at_ms, o.published_at_ms, \
                 (SELECT string_agg(i.consumer, ',') FROM inbox i WHERE i.event_id = o.event_id) \
                 FROM outbox o WHERE o.payload LIKE '%' || $1 || '%' ORDER BY o.seq",
            )
            .bind(id.to_string())
            .fetch_all(&mut db)
            .await
            .unwrap_or_default();
            for row in rows {
                report.push_str(&format!(
                    "  outbox seq {} event {} {} created {} published {:?} inbox {:?}\n",
                    row.get::<i64, _>(0),
                    row.get::<String, _>(1),
                    row.get::<String, _>(2),
                    row.get::<i64, _>(3),
                    row.get::<Option<i64>, _>(4),
                    row.get::<Option<String>, _>(5),
                ));
            }
        }
        let _ = db.close().await;
        let letters = rabbit(&self.prefix).await.dead_letters(WORKER, 10).await;
        report.push_str(&format!("dead letters of the worker: {letters:?}\n"));
        // The queue depths, when the broker's CLI is at hand (diagnostics only).
        if let Ok(output) = std::process::Command::new("rabbitmqctl")
            .args(["list_queues", "-q", "name", "messages_ready", "messages_unacknowledged"])
            .output()
        {
            let text = String::from_utf8_lossy(&output.stdout);
            for line in text.lines().filter(|l| l.contains(&self.prefix)) {
                report.push_str(&format!("  queue {line}\n"));
            }
        }
        report
    }

    /// The simulator's charge counts: `charged`, `max_charges_per_key`, `by_key`.
    async fn sim_stats(&self) -> Value {
        get_json(&self.api.http, &format!("{}/v1/stats", self.sim.address)).await
    }

    /// A process's `/metrics` (served on its own address: no edge in front).
    async fn metrics(&self, process: &Process) -> String {
        let url = format!("{}/metrics", process.address);
        let response = self.api.http.get(url).send().await.unwrap();
        assert!(response.status().is_success(), "{} /metrics: {}", process.name, response.status());
        response.text().await.unwrap()
    }

    /// `ferrobank ledger verify` on the test's database exits 0.
    async fn ledger_verify(&self) {
        let command = ferrobank(&["ledger", "verify", "--database-url", &self.db.url], &self.dir.0)
            .stdin(Stdio::null())
            .output();
        let output = tokio::time::timeout(COMMAND_TIMEOUT, command).await.unwrap().unwrap();
        assert!(
            output.status.success(),
            "ledger verify failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// What every test ends with, once `sent` are all final: each payment in exactly one
    /// final state, failed only when the gateway declined it; the simulator charged each
    /// key at most once, each completed external payment exactly once, and nothing else;
    /// the ledger verifies; each balance is what the completed payments make it, and no
    /// hold is left.
    async fn assert_consistent(&self, sent: &[Sent], accounts: &Accounts) {
        let ids: Vec<Uuid> = sent.iter().map(|s| s.id).collect();
        let payments = self.settled(&ids).await;
        let stats = self.sim_stats().await;
        let by_key = stats["by_key"].as_object().unwrap();
        assert!(stats["max_charges_per_key"].as_u64().unwrap() <= 1, "charged twice: {stats}");
        let clearing = PaymentService::clearing_account(Currency::parse("EUR").unwrap()).0;
        // Posted (debits, credits) per account.
        let mut expected: HashMap<Uuid, (i64, i64)> = HashMap::new();
        for debtor in &accounts.debtors {
            expected.entry(accounts.funder).or_default().0 += FUNDING_MINOR;
            expected.entry(*debtor).or_default().1 += FUNDING_MINOR;
        }
        let mut charged = 0;
        for Sent { id, spec } in sent {
            let payment = &payments[id];
            let key = id.to_string();
            let times = by_key.get(&key).and_then(Value::as_u64).unwrap_or(0);
            match payment["status"].as_str() {
                Some("completed") => {
                    expected.entry(spec.debtor).or_default().0 += spec.amount;
                    expected.entry(spec.beneficiary.unwrap_or(clearing)).or_default().1 +=
                        spec.amount;
                    if spec.beneficiary.is_none() {
                        assert_eq!(times, 1, "completed external payment {key} charged {times}x");
                        charged += 1;
                    }
                }
                Some("failed") => {
                    assert_eq!(payment["failure_code"], "declined", "{payment}");
                    assert!(spec.beneficiary.is_none(), "an internal payment failed: {payment}");
                    let url = format!("{}/v1/charges/{key}", self.sim.address);
                    let charge = get_json(&self.api.http, &url).await;
                    assert_eq!(charge["status"], "declined", "failed, not declined: {charge}");
                    assert_eq!(times, 0, "a declined payment was charged: {key}");
                }
                _ => unreachable!("settled() returned {payment}"),
            }
        }
        assert_eq!(by_key.len(), charged, "the simulator charged keys of no completed payment");
        self.ledger_verify().await;
        let all = [&[accounts.funder, clearing][..], &accounts.debtors, &accounts.beneficiaries];
        for account in all.concat() {
            let balances = self.api.get(&format!("/api/accounts/{account}/balances")).await;
            let (debits, credits) = expected.get(&account).copied().unwrap_or_default();
            assert_eq!(balances["debits_posted"], debits, "{account}: {balances}");
            assert_eq!(balances["credits_posted"], credits, "{account}: {balances}");
            assert_eq!(balances["debits_pending"], 0, "{account}: a hold is left: {balances}");
            assert_eq!(balances["credits_pending"], 0, "{account}: a hold is left: {balances}");
        }
    }
}

/// Starts the API (`name` = "api") or the worker process and waits until it is ready.
async fn spawn_service(
    name: &'static str,
    setup: &Setup,
    prefix: &str,
    sim: &Process,
    db: &TestDatabase,
    dir: &Path,
) -> Process {
    let worker = name == WORKER;
    let amqp = setup.amqp_url.clone().unwrap_or_else(amqp_url);
    let mut env: Vec<(&str, String)> = vec![
        // Anonymous callers may do everything: authentication has its own tests.
        ("IDENTITY__ENABLED", "false".into()),
        ("MESH__ENABLED", "false".into()),
        ("GATEWAY__ENABLED", "false".into()),
        ("LOG__FORMAT", "pretty".into()),
        ("BUS__KIND", "rabbitmq".into()),
        ("BUS__URL", amqp),
        ("BUS__PREFIX", prefix.into()),
        ("BUS__MAX_ATTEMPTS", BUS_RETRY.max_attempts.to_string()),
        ("BUS__INITIAL_BACKOFF_MS", BUS_RETRY.initial_backoff_ms.to_string()),
        ("BUS__MAX_BACKOFF_MS", BUS_RETRY.max_backoff_ms.to_string()),
        ("PAYMENTS__PSP_URL", sim.address.clone()),
        // Hundreds of payments per customer and hour: the risk rules have their own tests.
        ("RISK__VELOCITY__MAX_COUNT__STANDARD", "1000000".into()),
    ];
    env.extend(setup.services.iter().cloned());
    if worker {
        env.extend(setup.worker.iter().cloned());
    }
    let env: Vec<(String, String)> =
        env.into_iter().map(|(k, v)| (format!("FERROBANK_{k}"), v)).collect();
    // `serve accounts` alone refuses to start without an [auth] issuer; with the identity
    // role, turned off by FERROBANK_IDENTITY__ENABLED=false, it serves anonymous callers.
    let roles: &[&str] = if worker { &["payment-worker"] } else { &["accounts", "identity"] };
    let mut args = vec!["serve"];
    args.extend_from_slice(roles);
    args.extend(["--migrate", "--listen", "127.0.0.1:0", "--database-url", &db.url]);
    let process = spawn_process(name, &args, &env, dir, "ferrobank is up on ").await;
    let http = client();
    let ready = tokio::time::timeout(START_TIMEOUT, async {
        loop {
            let response = http.get(format!("{}/ready", process.address)).send().await;
            if response.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "{name} is not ready; its log:\n{}", process.tail());
    process
}

/// Runs the binary with `args` and `env`, its stderr appended to `<dir>/<name>.log`, and
/// waits for the stdout line starting with `marker` that carries its address.
async fn spawn_process(
    name: &'static str,
    args: &[&str],
    env: &[(String, String)],
    dir: &Path,
    marker: &str,
) -> Process {
    let log = dir.join(format!("{name}.log"));
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
    let mut command = ferrobank(args, dir);
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let found = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.ok().flatten() {
            if let Some(address) = line.strip_prefix(marker) {
                return Some(address.trim().to_owned());
            }
        }
        None
    })
    .await;
    let Ok(Some(address)) = found else {
        let _ = child.start_kill();
        panic!("{name} did not come up; its log:\n{}", tail(&log));
    };
    // Keep reading stdout so that the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Process { name, child, address, log }
}

/// A TCP proxy in front of RabbitMQ that the test can take down (every connection cut,
/// new ones refused) and bring back.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<tokio::task::JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        let accept = tokio::spawn({
            let (up, connections) = (up.clone(), connections.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped at once: the connection is refused
                    }
                    let upstream = upstream.clone();
                    connections.lock().unwrap().spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }
        });
        Self { port, up, connections, accept }
    }

    /// Cuts every connection and refuses new ones.
    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.connections.lock().unwrap().abort_all();
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections.lock().unwrap().abort_all();
    }
}

/// 1. `kill -9` of the payment worker while a batch is at the gateway, then a restart:
/// RabbitMQ gives the unacknowledged deliveries back, the worker charges them again under
/// the same key (the gateway replays the first answer), and every payment ends once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_mid_batch_loses_and_doubles_nothing() {
    const PAYMENTS: usize = 200;
    let setup = Setup {
        sim: vec![("LATENCY_MS", "20".into()), ("LATENCY_JITTER_MS", "20".into())],
        // The sweep never re-drives anything here: what the kill interrupted must come
        // back through the broker.
        services: vec![("PAYMENTS__STALE_AFTER_MS", "600000".into())],
        worker: vec![("PAYMENTS__WORKER_CONCURRENCY", "16".into())],
        amqp_url: None,
    };
    let mut stack = Stack::start(setup).await;
    let accounts = stack.api.accounts(5, 3).await;
    let load = tokio::spawn({
        let (api, accounts) = (stack.api.clone(), accounts.clone());
        async move { submit_all(&api, &accounts, PAYMENTS, 4).await }
    });
    // Kill once about a third completed, while charges are at the gateway (picked, not
    // settled: `processing`) and the rest is queued.
    let at_kill = poll_until("a third completed, charges in flight", SETTLE_TIMEOUT, || {
        let api = stack.api.clone();
        async move {
            let payments = api.payments().await;
            let count = |status: &str| payments.values().filter(|p| p["status"] == status).count();
            (count("completed") >= PAYMENTS / 3 && count("processing") > 0)
                .then(|| statuses(&payments, payments.keys()))
        }
    })
    .await;
    stack.worker().kill().await;
    let sent = load.await.unwrap();
    let ids: Vec<Uuid> = sent.iter().map(|s| s.id).collect();
    let with_worker_down = statuses(&stack.api.payments().await, &ids);
    eprintln!("at the kill: {at_kill:?}; all submitted, worker down: {with_worker_down:?}");
    assert!(
        with_worker_down
            .iter()
            .any(|(status, _)| !matches!(status.as_str(), "completed" | "failed")),
        "the kill came after all the work"
    );

    stack.restart_worker().await;
    let restarted = Instant::now();
    stack.settled(&ids).await;
    eprintln!("all {} payments final {:?} after the restart", ids.len(), restarted.elapsed());
    stack.assert_consistent(&sent, &accounts).await;
}

/// 2. RabbitMQ unreachable under load: the API keeps accepting payments (the outbox holds
/// their events), and once the broker is back the relay and the worker reconnect by
/// themselves and every payment completes, charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_are_accepted_while_rabbitmq_is_down_and_delivered_once_it_is_back() {
    const CLIENTS: u64 = 2;
    /// Pause between one client's payments.
    const PACE: Duration = Duration::from_millis(40);
    const BEFORE: Duration = Duration::from_millis(1_500);
    const OUTAGE: Duration = Duration::from_secs(4);
    const AFTER: Duration = Duration::from_millis(1_500);
    let upstream = url::Url::parse(&amqp_url()).unwrap();
    let address = format!("{}:{}", upstream.host_str().unwrap(), upstream.port().unwrap_or(5672));
    let proxy = Proxy::start(address).await;
    let mut proxied = upstream.clone();
    proxied.set_host(Some("127.0.0.1")).unwrap();
    proxied.set_port(Some(proxy.port)).unwrap();
    let setup = Setup {
        // The sweep never re-drives anything here: the bus must deliver.
        services: vec![("PAYMENTS__STALE_AFTER_MS", "600000".into())],
        amqp_url: Some(proxied.to_string()),
        ..Setup::default()
    };
    let stack = Stack::start(setup).await;
    let accounts = stack.api.accounts(4, 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (api, accounts, stop) = (stack.api.clone(), accounts.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(n + 7);
                let mut sent = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let spec = random_spec(&mut rng, &accounts);
                    // Every payment is accepted, broker or not.
                    sent.push((started.elapsed(), api.submit_ok(&spec).await));
                    tokio::time::sleep(PACE).await;
                }
                sent
            })
        })
        .collect();
    tokio::time::sleep(BEFORE).await;
    let down_at = started.elapsed();
    proxy.down();
    tokio::time::sleep(OUTAGE).await;
    let up_at = started.elapsed();
    // Whatever was accepted well into the outage is still waiting for the broker.
    let during: BTreeMap<String, usize> = {
        let payments = stack.api.payments().await;
        let first_ms = payments.values().filter_map(|p| p["created_at_ms"].as_i64()).min();
        let accepted_in_outage: Vec<Uuid> = payments
            .iter()
            .filter(|(_, p)| {
                let since_first = p["created_at_ms"].as_i64().unwrap() - first_ms.unwrap();
                let since_first = Duration::from_millis(u64::try_from(since_first).unwrap());
                since_first > down_at + Duration::from_millis(500)
            })
            .map(|(id, _)| *id)
            .collect();
        statuses(&payments, &accepted_in_outage)
    };
    proxy.up();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::SeqCst);
    let mut sent = Vec::new();
    for client in clients {
        sent.extend(client.await.unwrap());
    }
    let in_outage = sent.iter().filter(|(at, _)| *at > down_at && *at < up_at).count();
    eprintln!(
        "accepted {} payments, {in_outage} while RabbitMQ was unreachable; those accepted \
         well into the outage were, when it ended: {during:?}",
        sent.len()
    );
    assert!(in_outage >= 5, "too few payments during the outage: {in_outage}");
    assert_eq!(
        during.keys().map(String::as_str).collect::<Vec<_>>(),
        ["pending"],
        "a payment went on while the broker was unreachable"
    );
    let sent: Vec<Sent> = sent.into_iter().map(|(_, s)| s).collect();
    let ids: Vec<Uuid> = sent.iter().map(|s| s.id).collect();
    let back = Instant::now();
    stack.settled(&ids).await;
    eprintln!("all {} payments final {:?} after RabbitMQ came back", ids.len(), back.elapsed());
    stack.assert_consistent(&sent, &accounts).await;
    drop(stack);
    drop(proxy);
}

/// 3. A gateway that fails 30% of the calls, hangs past the client's timeout on 10%
/// (those are charged) and declines 5%: retries under the same key get every payment to
/// its end. Then a spell of total failure opens the circuit breaker: the deliveries go
/// back to the bus, then to the dead-letter queue, and the sweep re-drives them once the
/// gateway is back. Nobody is charged twice; only declined payments fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_and_hanging_gateway_charges_everybody_once() {
    const PAYMENTS: usize = 40;
    const DURING_OUTAGE: usize = 20;
    let setup = Setup {
        sim: vec![
            ("ERROR_RATE_PCT", "30".into()),
            ("TIMEOUT_RATE_PCT", "10".into()),
            ("DECLINE_RATE_PCT", "5".into()),
            ("HANG_MS", "1000".into()),
            ("LATENCY_MS", "5".into()),
        ],
        services: vec![
            ("PAYMENTS__PSP_TIMEOUT_MS", "300".into()),
            ("PAYMENTS__STALE_AFTER_MS", "2000".into()),
            ("PAYMENTS__SWEEP_INTERVAL_MS", "500".into()),
            ("PAYMENTS__BREAKER_OPEN_MS", "1000".into()),
        ],
        ..Setup::default()
    };
    let stack = Stack::start(setup).await;
    let accounts = stack.api.accounts(4, 2).await;
    let started = Instant::now();
    let mut sent = submit_all(&stack.api, &accounts, PAYMENTS, 4).await;
    let ids: Vec<Uuid> = sent.iter().map(|s| s.id).collect();
    stack.settled(&ids).await;
    eprintln!("{PAYMENTS} payments final after {:?}", started.elapsed());

    // Every call fails now: the breaker must open.
    let knobs = |knobs: Value| {
        let url = format!("{}/v1/admin/knobs", stack.sim.address);
        let request = stack.api.http.post(url).json(&knobs);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            assert!(status.is_success(), "{status} {}", response.text().await.unwrap());
        }
    };
    knobs(json!({ "error_rate_pct": 100, "timeout_rate_pct": 0, "decline_rate_pct": 0 })).await;
    let outage = Instant::now();
    sent.extend(submit_all(&stack.api, &accounts, DURING_OUTAGE, 2).await);
    let worker_log = &stack.worker.as_ref().unwrap().log;
    poll_until("the circuit breaker to open", SETTLE_TIMEOUT, || async {
        tail(worker_log).contains("circuit open").then_some(())
    })
    .await;
    knobs(json!({ "error_rate_pct": 30, "timeout_rate_pct": 10, "decline_rate_pct": 5 })).await;
    let ids: Vec<Uuid> = sent.iter().map(|s| s.id).collect();
    stack.settled(&ids).await;
    eprintln!("all {} payments final {:?} after the outage began", ids.len(), outage.elapsed());
    stack.assert_consistent(&sent, &accounts).await;

    let metrics = stack.metrics(stack.worker.as_ref().unwrap()).await;
    let calls = |outcome: &str| {
        metric(&metrics, "ferrobank_psp_calls_total", &[&format!("outcome=\"{outcome}\"")])
    };
    let worker = WORKER_LABEL;
    eprintln!(
        "gateway calls: charged {}, declined {}, error {}, timeout {}; bus retries {}, dead \
         letters {}; re-driven by the sweep {}",
        calls("charged"),
        calls("declined"),
        calls("error"),
        calls("timeout"),
        metric(&metrics, "ferrobank_bus_retried_total", &[worker]),
        metric(&metrics, "ferrobank_bus_dead_lettered_total", &[worker]),
        metric(&metrics, "ferrobank_payment_worker_redriven_total", &[]),
    );
    assert!(calls("error") > 0.0, "the gateway never failed");
    assert!(calls("timeout") > 0.0, "the gateway never hung past the timeout");
    assert!(metric(&metrics, "ferrobank_bus_retried_total", &[worker]) > 0.0, "no bus retry");
}

/// 4. The same `transaction.created` delivered 21 times, partly while the first is at the
/// gateway, has one effect: one charge, one ledger post. A poison event (no payment id, an
/// unknown payment) goes to the worker's dead-letter queue, and its metric says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_events_have_one_effect_and_poison_is_dead_lettered() {
    const COPIES: usize = 20;
    let setup = Setup {
        // The copies arrive while the first charge is still at the gateway.
        sim: vec![("LATENCY_MS", "300".into())],
        services: vec![("PAYMENTS__STALE_AFTER_MS", "600000".into())],
        ..Setup::default()
    };
    let stack = Stack::start(setup).await;
    let worker = stack.worker.as_ref().unwrap();
    // A consumer of the test's own on the same exchange sees what the relay publishes.
    let bus = rabbit(&stack.prefix).await;
    let mut capture = bus.subscribe(CAPTURE, &["transaction.created"]).await.unwrap();
    let accounts = stack.api.accounts(1, 1).await;
    let debtor = accounts.debtors[0];
    let external = stack.api.submit_ok(&Spec { debtor, beneficiary: None, amount: 700 }).await;
    let beneficiary = Some(accounts.beneficiaries[0]);
    let internal = stack.api.submit_ok(&Spec { debtor, beneficiary, amount: 300 }).await;
    let sent = [external.clone(), internal.clone()];

    let mut events = Vec::new();
    while events.len() < sent.len() {
        let delivery = tokio::time::timeout(BUS_TIMEOUT, capture.next()).await.unwrap().unwrap();
        events.push(delivery.event().clone());
        delivery.ack().await.unwrap();
    }
    for s in &sent {
        let named = events.iter().filter(|e| e.data["payment_id"] == s.id.to_string()).count();
        assert_eq!(named, 1, "one transaction.created per payment: {events:?}");
    }
    for _ in 0..COPIES {
        for event in &events {
            bus.publish(event).await.unwrap();
        }
    }
    let deliveries = (sent.len() * (COPIES + 1)) as f64;
    poll_until("every copy to be settled by the worker", BUS_TIMEOUT, || async {
        let metrics = stack.metrics(worker).await;
        let acked = metric(&metrics, "ferrobank_bus_acked_total", &[WORKER_LABEL]);
        (acked >= deliveries).then_some(())
    })
    .await;
    let metrics = stack.metrics(worker).await;
    let dead = metric(&metrics, "ferrobank_bus_dead_lettered_total", &[WORKER_LABEL]);
    assert_eq!(dead, 0.0, "a copy was dead-lettered\n{}", stack.logs());
    eprintln!(
        "copies recognised by the inbox: {}",
        metric(&metrics, "ferrobank_payment_worker_duplicates_total", &[])
    );

    let payments = stack.settled(&[external.id, internal.id]).await;
    let stats = stack.sim_stats().await;
    assert_eq!(stats["charged"], 1, "{stats}");
    assert_eq!(stats["by_key"][external.id.to_string()], 1, "{stats}");
    for s in &sent {
        let payment = &payments[&s.id];
        assert_eq!(payment["status"], "completed", "{payment}");
        let hold = payment["hold_id"].as_str().unwrap();
        let transfer = stack.api.get(&format!("/api/transfers/{hold}")).await;
        assert_eq!(transfer["pending_status"], "posted", "{transfer}");
        // Exactly one post of the hold in the debtor's history.
        let history = stack.api.get(&format!("/api/accounts/{debtor}/history?limit=500")).await;
        let posts = history["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["transfer"]["pending_id"] == hold)
            .filter(|e| e["transfer"]["flags"]["post_pending"] == true)
            .count();
        assert_eq!(posts, 1, "posts of hold {hold}: {history}");
    }
    stack.assert_consistent(&sent, &accounts).await;

    // Poison: an event naming no payment, and one naming a payment that does not exist.
    let time = rfc3339_from_unix_ms(i64::try_from(events.len()).unwrap() + 1_700_000_000_000);
    let poison = [json!({ "payment_id": "not-a-uuid" }), json!({ "payment_id": Uuid::now_v7() })]
        .map(|data| {
            Event::new(
                Uuid::now_v7(),
                "/ferrobank",
                "transaction.created",
                "pf-poison",
                &*time,
                data,
            )
        });
    for event in &poison {
        bus.publish(event).await.unwrap();
    }
    let letters =
        poll_until("the poison in the worker's dead-letter queue", BUS_TIMEOUT, || async {
            let letters = bus.dead_letters(WORKER, 10).await.unwrap();
            (letters.len() >= poison.len()).then_some(letters)
        })
        .await;
    let mut lettered: Vec<String> =
        letters.iter().map(|l| l.event.as_ref().unwrap().id.clone()).collect();
    let mut expected: Vec<String> = poison.iter().map(|e| e.id.clone()).collect();
    lettered.sort();
    expected.sort();
    assert_eq!(lettered, expected, "{letters:?}");
    let dead = poll_until("the dead-letter metric of the worker", BUS_TIMEOUT, || async {
        let metrics = stack.metrics(worker).await;
        let dead = metric(&metrics, "ferrobank_bus_dead_lettered_total", &[WORKER_LABEL]);
        (dead >= 1.0).then_some(dead)
    })
    .await;
    assert_eq!(dead, poison.len() as f64);
    drop(capture);
    drop(bus);
}
