//! The payment gateway simulator, black-box over HTTP on a random port: idempotent replay,
//! concurrent duplicates, errors, timeouts, declines, callbacks and the charge ledger that
//! proves nobody was charged twice.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use ferrobank::config::{Config, PspSimSettings};
use ferrobank::psp_sim::RunningPspSim;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

async fn spawn_sim(settings: PspSimSettings) -> (RunningPspSim, String) {
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        psp_sim: settings,
        ..Config::default()
    };
    let running = ferrobank::psp_sim::start(&config).await.unwrap();
    let base = format!("http://{}", running.addr);
    (running, base)
}

fn body(reference: &str) -> Value {
    json!({ "amount_minor": 1250, "currency": "EUR", "reference": reference })
}

async fn charge(client: &Client, base: &str, key: &str, body: &Value) -> reqwest::Response {
    client
        .post(format!("{base}/v1/charges"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn stats(client: &Client, base: &str) -> Value {
    client.get(format!("{base}/v1/stats")).send().await.unwrap().json().await.unwrap()
}

async fn set_knobs(client: &Client, base: &str, knobs: Value) {
    let response = client.post(format!("{base}/v1/admin/knobs")).json(&knobs).send().await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
}

async fn assert_problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], status.as_u16());
    problem
}

async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < give_up, "gave up after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_replay_returns_the_same_charge_and_charges_once() {
    let (sim, base) = spawn_sim(PspSimSettings::default()).await;
    let client = Client::new();
    let first = charge(&client, &base, "pay-1", &body("invoice 1")).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["idempotency_key"], "pay-1");

    let again = charge(&client, &base, "pay-1", &body("invoice 1")).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["charge_id"], first["charge_id"]);

    let fetched = client.get(format!("{base}/v1/charges/pay-1")).send().await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.json::<Value>().await.unwrap()["charge_id"], first["charge_id"]);
    let unknown = client.get(format!("{base}/v1/charges/nope")).send().await.unwrap();
    assert_problem(unknown, StatusCode::NOT_FOUND).await;

    let stats = stats(&client, &base).await;
    assert_eq!(stats["charged"], 1);
    assert_eq!(stats["by_key"]["pay-1"], 1);
    assert_eq!(stats["max_charges_per_key"], 1);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn fifty_concurrent_requests_with_one_key_charge_once() {
    let settings = PspSimSettings { latency_ms: 100, ..PspSimSettings::default() };
    let (sim, base) = spawn_sim(settings).await;
    let client = Client::new();
    let calls = (0..50).map(|_| {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            let response = charge(&client, &base, "same-key", &body("rent")).await;
            let status = response.status();
            (status, response.json::<Value>().await.unwrap()["charge_id"].clone())
        })
    });
    let mut created = 0;
    let mut ids = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        let (status, id) = call.await.unwrap();
        assert!(status == StatusCode::CREATED || status == StatusCode::OK, "{status}");
        created += usize::from(status == StatusCode::CREATED);
        ids.push(id);
    }
    assert_eq!(created, 1);
    assert!(ids.iter().all(|id| *id == ids[0]));
    let stats = stats(&client, &base).await;
    assert_eq!(stats["charged"], 1);
    assert_eq!(stats["max_charges_per_key"], 1);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused() {
    let (sim, base) = spawn_sim(PspSimSettings::default()).await;
    let client = Client::new();
    assert_eq!(charge(&client, &base, "k", &body("a")).await.status(), StatusCode::CREATED);
    let other = charge(&client, &base, "k", &body("b")).await;
    let problem = assert_problem(other, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem["type"].as_str().unwrap().ends_with("/idempotency_key_reused"));
    assert_eq!(stats(&client, &base).await["charged"], 1);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn errors_charge_nothing_and_the_key_can_be_retried() {
    let settings = PspSimSettings { error_rate_pct: 100, ..PspSimSettings::default() };
    let (sim, base) = spawn_sim(settings).await;
    let client = Client::new();
    for i in 0..10 {
        let response = charge(&client, &base, &format!("e-{i}"), &body("x")).await;
        assert!(response.status().is_server_error());
        assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    }
    assert_eq!(stats(&client, &base).await["charged"], 0);
    set_knobs(&client, &base, json!({ "error_rate_pct": 0 })).await;
    assert_eq!(charge(&client, &base, "e-0", &body("x")).await.status(), StatusCode::CREATED);
    assert_eq!(stats(&client, &base).await["charged"], 1);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn a_timed_out_charge_is_recorded_and_a_retry_returns_it() {
    let settings =
        PspSimSettings { timeout_rate_pct: 100, hang_ms: 10_000, ..PspSimSettings::default() };
    let (sim, base) = spawn_sim(settings).await;
    let impatient = Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let sent = impatient
        .post(format!("{base}/v1/charges"))
        .header("Idempotency-Key", "t-1")
        .json(&body("hang"))
        .send()
        .await;
    assert!(sent.unwrap_err().is_timeout());
    let client = Client::new();
    // Charged although the caller heard nothing.
    poll_until("the timed-out charge", Duration::from_secs(5), || async {
        (stats(&client, &base).await["by_key"]["t-1"] == 1).then_some(())
    })
    .await;
    let retry = charge(&client, &base, "t-1", &body("hang")).await;
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap()["status"], "succeeded");
    let stats = stats(&client, &base).await;
    assert_eq!(stats["charged"], 1);
    assert_eq!(stats["max_charges_per_key"], 1);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn a_decline_is_definitive() {
    let settings = PspSimSettings { decline_rate_pct: 100, ..PspSimSettings::default() };
    let (sim, base) = spawn_sim(settings).await;
    let client = Client::new();
    let declined = charge(&client, &base, "d-1", &body("x")).await;
    assert_problem(declined, StatusCode::PAYMENT_REQUIRED).await;
    set_knobs(&client, &base, json!({ "decline_rate_pct": 0 })).await;
    // Retrying the declined key does not turn it into a charge.
    let again = charge(&client, &base, "d-1", &body("x")).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_problem(again, StatusCode::PAYMENT_REQUIRED).await;
    assert_eq!(stats(&client, &base).await["charged"], 0);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn callbacks_are_delivered_including_duplicates_and_late_ones() {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let receiver = axum::Router::new()
        .route(
            "/hook",
            post(
                |State(seen): State<Arc<Mutex<Vec<Value>>>>, Json(event): Json<Value>| async move {
                    seen.lock().unwrap().push(event);
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let hook_server = tokio::spawn(async move { axum::serve(listener, receiver).await });

    let settings = PspSimSettings {
        duplicate_callback_pct: 100,
        late_callback_ms: 200,
        ..PspSimSettings::default()
    };
    let (sim, base) = spawn_sim(settings).await;
    let client = Client::new();
    let mut request = body("with callback");
    request["callback_url"] = json!(hook);
    let created = charge(&client, &base, "cb-1", &request).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let charge_id = created.json::<Value>().await.unwrap()["charge_id"].clone();
    let events = poll_until("two callbacks", Duration::from_secs(5), || async {
        let seen = received.lock().unwrap().clone();
        (seen.len() >= 2).then_some(seen)
    })
    .await;
    assert_eq!(events.len(), 2);
    for event in events {
        assert_eq!(event["charge_id"], charge_id);
        assert_eq!(event["idempotency_key"], "cb-1");
        assert_eq!(event["status"], "succeeded");
    }
    assert_eq!(stats(&client, &base).await["charged"], 1);
    sim.stop().await.unwrap();
    hook_server.abort();
}

#[tokio::test]
async fn bad_input_is_a_4xx_problem_never_a_5xx() {
    let settings = PspSimSettings { max_body_bytes: 1024, ..PspSimSettings::default() };
    let (sim, base) = spawn_sim(settings).await;
    let client = Client::new();
    let no_key = client.post(format!("{base}/v1/charges")).json(&body("x")).send().await;
    assert_problem(no_key.unwrap(), StatusCode::BAD_REQUEST).await;
    let bad = [
        json!({ "amount_minor": 0, "currency": "EUR", "reference": "x" }),
        json!({ "amount_minor": -5, "currency": "EUR", "reference": "x" }),
        json!({ "amount_minor": 5, "currency": "eur", "reference": "x" }),
        json!({ "amount_minor": 5, "currency": "EUR", "reference": "" }),
        json!({ "amount_minor": 5, "currency": "EUR" }),
        json!({ "amount_minor": 5, "currency": "EUR", "reference": "x", "extra": 1 }),
        json!({ "amount_minor": 5, "currency": "EUR", "reference": "x", "beneficiary_iban": "DE00" }),
        json!({ "amount_minor": 5, "currency": "EUR", "reference": "x", "callback_url": "ftp://x" }),
        json!({ "amount_minor": 1.5, "currency": "EUR", "reference": "x" }),
        json!([1, 2]),
    ];
    for (i, request) in bad.iter().enumerate() {
        let response = charge(&client, &base, &format!("bad-{i}"), request).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let malformed = client
        .post(format!("{base}/v1/charges"))
        .header("Idempotency-Key", "m")
        .body("{not json")
        .send()
        .await;
    assert_problem(malformed.unwrap(), StatusCode::BAD_REQUEST).await;
    let huge = json!({ "amount_minor": 5, "currency": "EUR", "reference": "x".repeat(4096) });
    let too_large = charge(&client, &base, "huge", &huge).await;
    assert_problem(too_large, StatusCode::PAYLOAD_TOO_LARGE).await;
    let knobs = client
        .post(format!("{base}/v1/admin/knobs"))
        .json(&json!({ "error_rate_pct": 80, "timeout_rate_pct": 30 }))
        .send()
        .await;
    assert_problem(knobs.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
    let valid_iban = json!({
        "amount_minor": 5, "currency": "EUR", "reference": "x",
        "beneficiary_iban": "DE89 3704 0044 0532 0130 00"
    });
    assert_eq!(charge(&client, &base, "iban", &valid_iban).await.status(), StatusCode::CREATED);
    assert_eq!(stats(&client, &base).await["charged"], 1);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn the_same_seed_draws_the_same_outcomes() {
    let settings = PspSimSettings {
        error_rate_pct: 30,
        decline_rate_pct: 20,
        seed: 7,
        ..PspSimSettings::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (sim, base) = spawn_sim(settings.clone()).await;
        let client = Client::new();
        let mut statuses = Vec::new();
        for i in 0..20 {
            statuses.push(charge(&client, &base, &format!("s-{i}"), &body("x")).await.status());
        }
        runs.push(statuses);
        sim.stop().await.unwrap();
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].contains(&StatusCode::CREATED));
    assert!(runs[0].iter().any(|s| s.is_server_error()));
}

/// Failure test 3's mix: 30% errors and 10% timeouts; a client that retries with the same key
/// finishes every payment and nobody is charged twice.
#[tokio::test]
async fn retrying_through_errors_and_timeouts_charges_everyone_once() {
    let settings = PspSimSettings {
        error_rate_pct: 30,
        timeout_rate_pct: 10,
        hang_ms: 1_000,
        seed: 3,
        ..PspSimSettings::default()
    };
    let (sim, base) = spawn_sim(settings).await;
    let client = Client::builder().timeout(Duration::from_millis(250)).build().unwrap();
    let payments = (0..40).map(|i| {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            for attempt in 1..=30 {
                let sent = client
                    .post(format!("{base}/v1/charges"))
                    .header("Idempotency-Key", format!("mix-{i}"))
                    .json(&body("mix"))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => return attempt,
                    Ok(response) => assert!(response.status().is_server_error()),
                    Err(error) => assert!(error.is_timeout(), "{error}"),
                }
            }
            panic!("payment mix-{i} never finished");
        })
    });
    let mut retried = 0;
    for payment in payments.collect::<Vec<_>>() {
        retried += usize::from(payment.await.unwrap() > 1);
    }
    assert!(retried > 0, "the mix should have made somebody retry");
    let client = Client::new();
    let stats = stats(&client, &base).await;
    assert_eq!(stats["charged"], 40);
    assert_eq!(stats["max_charges_per_key"], 1);
    sim.stop().await.unwrap();
}

/// The real binary: `ferrobank serve psp-sim` starts without a database and charges.
#[tokio::test]
async fn the_binary_serves_the_simulator_alone() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let dir = std::env::temp_dir().join(format!("ferrobank-psp-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferrobank"))
        .args(["serve", "psp-sim", "--listen", "127.0.0.1:0"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = line.rsplit(' ').next().unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");
    let client = Client::new();
    assert_eq!(charge(&client, &base, "bin-1", &body("x")).await.status(), StatusCode::CREATED);
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("ferrobank_psp_sim_charges_total{outcome=\"succeeded\"} 1"));
    child.kill().await.unwrap();

    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferrobank"))
        .args(["serve", "psp-sim", "--listen", "127.0.0.1:0"])
        .current_dir(&dir)
        .env("FERROBANK_PSP_SIM__ERROR_RATE_PCT", "150")
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("psp_sim.error_rate_pct"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
