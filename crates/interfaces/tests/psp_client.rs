//! The HTTP payment-gateway client against the simulator on a random port: charges,
//! replays, declines, retries of errors and timeouts with the same key, and the circuit
//! breaker. The simulator's ledger (`/v1/stats`) proves that nobody is charged twice; a
//! counter in front of its router proves which calls reached it.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use ferrobank_adapters::psp::{BreakerState, HttpPaymentGateway, PspClientOptions};
use ferrobank_application::psp::{ChargeOutcome, ChargeRequest, PaymentGateway, PspError};
use ferrobank_interfaces::psp_sim::{Knobs, Limits, PspSim, router};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower::util::MapRequestLayer;

/// Longest a test waits for the circuit to let a trial through.
const DEADLINE: Duration = Duration::from_secs(10);

/// A simulator served on 127.0.0.1:0, counting the `POST /v1/charges` that reach it.
struct Sim {
    base: String,
    admin: Router,
    posts: Arc<AtomicUsize>,
}

impl Sim {
    async fn start(knobs: Knobs) -> Sim {
        let sim = PspSim::new(knobs, Limits::default(), 42).unwrap();
        let posts = Arc::new(AtomicUsize::new(0));
        let counter = posts.clone();
        let app = router(sim.clone()).layer(MapRequestLayer::new(move |request: Request<Body>| {
            if request.method() == Method::POST && request.uri().path() == "/v1/charges" {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            request
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Sim { base, admin: router(sim), posts }
    }

    fn posts(&self) -> usize {
        self.posts.load(Ordering::SeqCst)
    }

    async fn call(&self, request: Request<Body>) -> Value {
        let response = self.admin.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    async fn stats(&self) -> Value {
        self.call(Request::get("/v1/stats").body(Body::empty()).unwrap()).await
    }

    async fn set_knobs(&self, knobs: Value) {
        let request = Request::post("/v1/admin/knobs")
            .header("content-type", "application/json")
            .body(Body::from(knobs.to_string()))
            .unwrap();
        self.call(request).await;
    }

    /// How often each key was charged, by the simulator's ledger.
    async fn times_charged(&self, key: &str) -> u64 {
        self.stats().await["by_key"][key].as_u64().unwrap_or(0)
    }

    fn client(&self, options: PspClientOptions) -> HttpPaymentGateway {
        HttpPaymentGateway::new(&self.base, options).unwrap()
    }
}

/// Fast backoff, so retries do not slow the tests down.
fn quick() -> PspClientOptions {
    PspClientOptions {
        timeout_ms: 2_000,
        max_attempts: 4,
        initial_backoff_ms: 1,
        max_backoff_ms: 10,
        ..PspClientOptions::default()
    }
}

fn charge(key: &str) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: key.to_owned(),
        amount_minor: 1_250,
        currency: "EUR".into(),
        reference: format!("payment {key}"),
        beneficiary_iban: Some("DE89 3704 0044 0532 0130 00".into()),
    }
}

fn charge_id(outcome: Result<ChargeOutcome, PspError>) -> String {
    match outcome {
        Ok(ChargeOutcome::Charged { charge_id }) => charge_id,
        other => panic!("expected a charge, got {other:?}"),
    }
}

async fn poll_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < give_up, "gave up after {DEADLINE:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Charges until the circuit lets the call through, and returns what that call answered.
async fn charge_when_admitted(
    gateway: &HttpPaymentGateway,
    request: &ChargeRequest,
) -> Result<ChargeOutcome, PspError> {
    poll_until("the circuit to let a trial through", || async {
        match gateway.charge(request).await {
            Err(PspError::CircuitOpen { .. }) => None,
            other => Some(other),
        }
    })
    .await
}

#[tokio::test]
async fn a_charge_is_charged_once() {
    let sim = Sim::start(Knobs::default()).await;
    let gateway = sim.client(quick());
    let id = charge_id(gateway.charge(&charge("pay-1")).await);
    assert!(id.starts_with("ch_"), "{id}");
    assert_eq!(sim.posts(), 1);
    assert_eq!(sim.times_charged("pay-1").await, 1);
    assert_eq!(gateway.circuit_state(), BreakerState::Closed);
}

#[tokio::test]
async fn a_replay_with_the_same_key_returns_the_first_charge() {
    let sim = Sim::start(Knobs::default()).await;
    let gateway = sim.client(quick());
    let first = charge_id(gateway.charge(&charge("pay-1")).await);
    let again = charge_id(gateway.charge(&charge("pay-1")).await);
    assert_eq!(first, again);
    let stats = sim.stats().await;
    assert_eq!(
        (stats["charged"].as_u64(), stats["max_charges_per_key"].as_u64()),
        (Some(1), Some(1))
    );
    // The same key with another amount is the caller's bug: refused, not charged, not retried.
    let mut changed = charge("pay-1");
    changed.amount_minor += 1;
    match gateway.charge(&changed).await {
        Err(PspError::Refused(reason)) => {
            assert!(reason.contains("idempotency_key_reused"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(sim.posts(), 3);
    assert_eq!(sim.stats().await["charged"], 1);
    assert_eq!(gateway.circuit_state(), BreakerState::Closed);
}

#[tokio::test]
async fn a_decline_is_final_and_keeps_the_circuit_closed() {
    let sim = Sim::start(Knobs { decline_rate_pct: 100, ..Knobs::default() }).await;
    let gateway = sim.client(PspClientOptions { breaker_failure_threshold: 1, ..quick() });
    for i in 0..3 {
        let outcome = gateway.charge(&charge(&format!("pay-{i}"))).await;
        assert_eq!(outcome, Ok(ChargeOutcome::Declined { reason: "charge_declined".into() }));
    }
    assert_eq!(sim.posts(), 3, "a decline is not retried");
    assert_eq!(sim.stats().await["charged"], 0);
    assert_eq!(gateway.circuit_state(), BreakerState::Closed);
}

#[tokio::test]
async fn errors_use_every_attempt_then_the_circuit_opens_until_the_gateway_heals() {
    let sim = Sim::start(Knobs { error_rate_pct: 100, ..Knobs::default() }).await;
    let options = PspClientOptions {
        max_attempts: 3,
        breaker_failure_threshold: 3,
        breaker_open_ms: 300,
        ..quick()
    };
    let gateway = sim.client(options);
    let request = charge("pay-1");

    let outcome = gateway.charge(&request).await;
    assert!(matches!(outcome, Err(PspError::Unavailable(_))), "{outcome:?}");
    assert_eq!(sim.posts(), 3, "exactly max_attempts calls");
    assert_eq!(gateway.circuit_state(), BreakerState::Open);

    // Open: refused without calling.
    match gateway.charge(&request).await {
        Err(PspError::CircuitOpen { retry_after_ms }) => {
            assert!(retry_after_ms > 0 && retry_after_ms <= 300, "{retry_after_ms}");
        }
        other => panic!("expected an open circuit, got {other:?}"),
    }
    assert_eq!(sim.posts(), 3, "an open circuit calls nobody");

    // Half-open while still failing: one trial call, and the circuit opens again.
    let trial = charge_when_admitted(&gateway, &request).await;
    assert!(matches!(trial, Err(PspError::Unavailable(_))), "{trial:?}");
    assert_eq!(sim.posts(), 4, "one trial call");
    assert_eq!(gateway.circuit_state(), BreakerState::Open);

    // Healed: the next trial charges and closes the circuit.
    sim.set_knobs(json!({ "error_rate_pct": 0 })).await;
    charge_id(charge_when_admitted(&gateway, &request).await);
    assert_eq!(sim.posts(), 5);
    assert_eq!(gateway.circuit_state(), BreakerState::Closed);
    charge_id(gateway.charge(&charge("pay-2")).await);
    assert_eq!(sim.times_charged("pay-1").await, 1);
}

#[tokio::test]
async fn a_timed_out_attempt_is_retried_with_the_same_key_and_charged_once() {
    // Every first answer comes 5 s late, but the charge is made at once.
    let sim = Sim::start(Knobs { timeout_rate_pct: 100, hang_ms: 5_000, ..Knobs::default() }).await;
    let gateway = sim.client(PspClientOptions { timeout_ms: 200, ..quick() });
    let started = Instant::now();
    charge_id(gateway.charge(&charge("pay-1")).await);
    assert!(started.elapsed() < Duration::from_secs(2), "did not wait for the late answer");
    // The timed-out attempt and its replay.
    assert_eq!(sim.posts(), 2);
    assert_eq!(sim.times_charged("pay-1").await, 1);
}

#[tokio::test]
async fn every_key_is_charged_once_through_errors_and_timeouts() {
    let knobs =
        Knobs { error_rate_pct: 30, timeout_rate_pct: 10, hang_ms: 2_000, ..Knobs::default() };
    let sim = Sim::start(knobs).await;
    // Patient: enough attempts that 30 % errors cannot exhaust them, a breaker that does
    // not open on a run of failures.
    let options = PspClientOptions {
        timeout_ms: 300,
        max_attempts: 30,
        initial_backoff_ms: 1,
        max_backoff_ms: 20,
        breaker_failure_threshold: 1_000,
        ..PspClientOptions::default()
    };
    let gateway = Arc::new(sim.client(options));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let gateway = gateway.clone();
        tasks.spawn(async move {
            let key = format!("pay-{i}");
            (key.clone(), gateway.charge(&charge(&key)).await)
        });
    }
    let mut charged = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let (key, outcome) = result.unwrap();
        charged.push((key, charge_id(outcome)));
    }
    assert_eq!(charged.len(), 50);
    let stats = sim.stats().await;
    assert_eq!(stats["charged"], 50);
    assert_eq!(stats["max_charges_per_key"], 1);
    for (key, _) in &charged {
        assert_eq!(stats["by_key"][key], 1, "{key}");
    }
    assert!(sim.posts() > 50, "the mix made the client retry ({} calls)", sim.posts());
}

#[test]
fn bad_base_urls_and_options_are_refused() {
    let new = |url: &str, options| HttpPaymentGateway::new(url, options).map(|_| ());
    assert!(new("ftp://psp.example", PspClientOptions::default()).is_err());
    assert!(new("https://psp.example", PspClientOptions::default()).is_err(), "https needs TLS");
    assert!(new("http://psp.example?x=1", PspClientOptions::default()).is_err());
    assert!(new("not a url", PspClientOptions::default()).is_err());
    let no_attempts = PspClientOptions { max_attempts: 0, ..PspClientOptions::default() };
    assert!(new("http://psp.example", no_attempts).is_err());
    assert!(new("http://psp.example/prefix/", PspClientOptions::default()).is_ok());
}
