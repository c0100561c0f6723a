//! An external payment gateway (PSP) simulator: idempotent charges with knobs for latency,
//! errors, timeouts, declines and duplicate or late callbacks. It remembers how often each
//! idempotency key was charged, so failure tests can prove that nobody was charged twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use ferrobank_domain::Iban;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use crate::http::problem::Problem;

/// Longest `Idempotency-Key`, in bytes.
pub const MAX_KEY_BYTES: usize = 255;
/// Longest `reference`, in characters.
pub const MAX_REFERENCE_CHARS: usize = 140;
/// Longest `callback_url`, in bytes.
pub const MAX_CALLBACK_URL_BYTES: usize = 2048;
/// Callbacks queued or in flight at once; more are dropped (and counted).
pub const MAX_PENDING_CALLBACKS: usize = 10_000;
/// How long one callback POST may take.
pub const CALLBACK_TIMEOUT_MS: u64 = 5_000;
/// The header a replayed answer carries.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The failure knobs, changeable at runtime (`POST /v1/admin/knobs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Knobs {
    /// Fixed delay before each charge is decided, in milliseconds.
    pub latency_ms: u64,
    /// Extra delay drawn uniformly from `0..=latency_jitter_ms`.
    pub latency_jitter_ms: u64,
    /// Share of charges answered 5xx without charging, in percent.
    pub error_rate_pct: u32,
    /// Share of charges that are charged but answered only after `hang_ms`, in percent.
    pub timeout_rate_pct: u32,
    /// Share of charges definitively declined (402, not charged), in percent.
    pub decline_rate_pct: u32,
    /// How long a timed-out charge withholds its answer, in milliseconds.
    pub hang_ms: u64,
    /// Share of callbacks delivered twice, in percent.
    pub duplicate_callback_pct: u32,
    /// Each callback is delayed by a draw from `0..=late_callback_ms`.
    pub late_callback_ms: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            latency_jitter_ms: 0,
            error_rate_pct: 0,
            timeout_rate_pct: 0,
            decline_rate_pct: 0,
            hang_ms: 30_000,
            duplicate_callback_pct: 0,
            late_callback_ms: 0,
        }
    }
}

impl Knobs {
    /// Refuses percentages above 100 and outcome shares that add up to more than 100.
    pub fn validate(&self) -> Result<(), String> {
        let pcts = [
            ("error_rate_pct", self.error_rate_pct),
            ("timeout_rate_pct", self.timeout_rate_pct),
            ("decline_rate_pct", self.decline_rate_pct),
            ("duplicate_callback_pct", self.duplicate_callback_pct),
        ];
        if let Some((name, value)) = pcts.iter().find(|(_, v)| *v > 100) {
            return Err(format!("{name} = {value} is above 100"));
        }
        let outcomes = self.error_rate_pct + self.timeout_rate_pct + self.decline_rate_pct;
        if outcomes > 100 {
            return Err(format!(
                "error_rate_pct + timeout_rate_pct + decline_rate_pct = {outcomes} is above 100"
            ));
        }
        Ok(())
    }
}

/// A partial update of [`Knobs`]: absent fields keep their value.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnobsPatch {
    latency_ms: Option<u64>,
    latency_jitter_ms: Option<u64>,
    error_rate_pct: Option<u32>,
    timeout_rate_pct: Option<u32>,
    decline_rate_pct: Option<u32>,
    hang_ms: Option<u64>,
    duplicate_callback_pct: Option<u32>,
    late_callback_ms: Option<u64>,
}

impl KnobsPatch {
    fn apply(self, knobs: &Knobs) -> Knobs {
        Knobs {
            latency_ms: self.latency_ms.unwrap_or(knobs.latency_ms),
            latency_jitter_ms: self.latency_jitter_ms.unwrap_or(knobs.latency_jitter_ms),
            error_rate_pct: self.error_rate_pct.unwrap_or(knobs.error_rate_pct),
            timeout_rate_pct: self.timeout_rate_pct.unwrap_or(knobs.timeout_rate_pct),
            decline_rate_pct: self.decline_rate_pct.unwrap_or(knobs.decline_rate_pct),
            hang_ms: self.hang_ms.unwrap_or(knobs.hang_ms),
            duplicate_callback_pct: self
                .duplicate_callback_pct
                .unwrap_or(knobs.duplicate_callback_pct),
            late_callback_ms: self.late_callback_ms.unwrap_or(knobs.late_callback_ms),
        }
    }
}

/// Fixed bounds of one simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Idempotency keys remembered; a new key beyond this is answered 503.
    pub max_charges: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_charges: 1_000_000, max_body_bytes: 16 * 1024 }
    }
}

/// `POST /v1/charges` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChargeRequest {
    amount_minor: i64,
    currency: String,
    reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    beneficiary_iban: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    callback_url: Option<String>,
}

impl ChargeRequest {
    fn validate(&mut self) -> Result<(), Problem> {
        if self.amount_minor <= 0 {
            return Err(Problem::invalid_body("amount_minor must be greater than 0"));
        }
        if !(self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(Problem::invalid_body("currency must be three upper-case letters"));
        }
        let chars = self.reference.chars().count();
        if chars == 0 || chars > MAX_REFERENCE_CHARS {
            return Err(Problem::invalid_body(format!(
                "reference must have 1 to {MAX_REFERENCE_CHARS} characters"
            )));
        }
        if let Some(iban) = &self.beneficiary_iban {
            let iban = Iban::parse(iban)
                .map_err(|e| Problem::invalid_body(format!("beneficiary_iban: {e}")))?;
            self.beneficiary_iban = Some(iban.electronic().to_owned());
        }
        if let Some(url) = &self.callback_url {
            let parsed = url::Url::parse(url).ok().filter(|u| {
                u.scheme() == "http" && u.host().is_some() && url.len() <= MAX_CALLBACK_URL_BYTES
            });
            if parsed.is_none() {
                return Err(Problem::invalid_body(format!(
                    "callback_url must be an http:// URL of at most {MAX_CALLBACK_URL_BYTES} bytes"
                )));
            }
        }
        Ok(())
    }
}

/// A charge the simulator made, as answered and as posted to the callback URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Charge {
    charge_id: String,
    status: &'static str,
    idempotency_key: String,
    amount_minor: i64,
    currency: String,
    reference: String,
}

/// How one charge attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Charged and answered at once.
    Charged(Charge),
    /// Charged, but the first answer is withheld for `hang_ms`.
    ChargedHanging(Charge),
    /// Definitively declined; not charged; replayed as such.
    Declined(Charge),
    /// A simulated gateway failure; not charged; the key may be retried.
    Failed,
}

#[derive(Debug)]
enum Entry {
    InFlight { request: ChargeRequest, done: watch::Receiver<Option<Outcome>> },
    Done { request: ChargeRequest, outcome: Outcome },
}

#[derive(Debug)]
struct Inner {
    knobs: Knobs,
    rng: SplitMix64,
    entries: HashMap<String, Entry>,
    times_charged: HashMap<String, u32>,
    charged: u64,
}

/// The simulator's state, shared by its handlers.
#[derive(Debug, Clone)]
pub struct PspSim {
    inner: Arc<Mutex<Inner>>,
    limits: Limits,
    client: Client<HttpConnector, Full<Bytes>>,
    callbacks: Arc<Semaphore>,
}

/// `GET /v1/stats`.
#[derive(Debug, Serialize)]
struct Stats {
    charged: u64,
    max_charges_per_key: u32,
    by_key: HashMap<String, u32>,
}

impl PspSim {
    /// A simulator with these knobs and bounds; `seed` makes a run reproducible.
    pub fn new(knobs: Knobs, limits: Limits, seed: u64) -> Result<Self, String> {
        knobs.validate()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(CALLBACK_TIMEOUT_MS)));
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                knobs,
                rng: SplitMix64(seed),
                entries: HashMap::new(),
                times_charged: HashMap::new(),
                charged: 0,
            })),
            limits,
            client: Client::builder(TokioExecutor::new()).build(connector),
            callbacks: Arc::new(Semaphore::new(MAX_PENDING_CALLBACKS)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one attempt to its end, whatever happens to the request that started it.
    async fn attempt(
        self,
        key: String,
        request: ChargeRequest,
        done: watch::Sender<Option<Outcome>>,
    ) {
        let delay_ms = {
            let mut inner = self.lock();
            let bound = inner.knobs.latency_jitter_ms.saturating_add(1);
            let jitter = inner.rng.below(bound);
            inner.knobs.latency_ms.saturating_add(jitter)
        };
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        let (outcome, callbacks) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let knobs = inner.knobs.clone();
            let roll = inner.rng.below(100);
            let charge = |status| Charge {
                charge_id: String::new(),
                status,
                idempotency_key: key.clone(),
                amount_minor: request.amount_minor,
                currency: request.currency.clone(),
                reference: request.reference.clone(),
            };
            let error = u64::from(knobs.error_rate_pct);
            let timeout = error + u64::from(knobs.timeout_rate_pct);
            let decline = timeout + u64::from(knobs.decline_rate_pct);
            let mut outcome = match roll {
                r if r < error => Outcome::Failed,
                r if r < timeout => Outcome::ChargedHanging(charge("succeeded")),
                r if r < decline => Outcome::Declined(charge("declined")),
                _ => Outcome::Charged(charge("succeeded")),
            };
            let id = format!("ch_{:016x}", inner.rng.next());
            if let Outcome::Charged(c) | Outcome::ChargedHanging(c) | Outcome::Declined(c) =
                &mut outcome
            {
                c.charge_id = id;
            }
            if matches!(outcome, Outcome::Charged(_) | Outcome::ChargedHanging(_)) {
                inner.charged += 1;
                *inner.times_charged.entry(key.clone()).or_insert(0) += 1;
            }
            let label = match outcome {
                Outcome::Charged(_) => "succeeded",
                Outcome::ChargedHanging(_) => "timed_out",
                Outcome::Declined(_) => "declined",
                Outcome::Failed => "error",
            };
            metrics::counter!("ferrobank_psp_sim_charges_total", "outcome" => label).increment(1);
            match outcome {
                // A failed attempt leaves nothing behind: the key may be tried again.
                Outcome::Failed => {
                    inner.entries.remove(&key);
                }
                _ => {
                    inner.entries.insert(
                        key.clone(),
                        Entry::Done { request: request.clone(), outcome: outcome.clone() },
                    );
                }
            }
            let callbacks = match (&outcome, &request.callback_url) {
                (Outcome::Failed, _) | (_, None) => Vec::new(),
                (
                    Outcome::Charged(c) | Outcome::ChargedHanging(c) | Outcome::Declined(c),
                    Some(url),
                ) => {
                    let twice = inner.rng.below(100) < u64::from(knobs.duplicate_callback_pct);
                    let copies = if twice { 2 } else { 1 };
                    (0..copies)
                        .map(|_| {
                            let late = inner.rng.below(knobs.late_callback_ms.saturating_add(1));
                            (url.clone(), c.clone(), late)
                        })
                        .collect()
                }
            };
            (outcome, callbacks)
        };
        for (url, charge, late_ms) in callbacks {
            self.spawn_callback(url, charge, late_ms);
        }
        // Nobody waiting is fine: the outcome is already recorded.
        let _ = done.send(Some(outcome));
    }

    fn spawn_callback(&self, url: String, charge: Charge, late_ms: u64) {
        let Ok(permit) = self.callbacks.clone().try_acquire_owned() else {
            metrics::counter!("ferrobank_psp_sim_callbacks_total", "outcome" => "dropped")
                .increment(1);
            return;
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::time::sleep(Duration::from_millis(late_ms)).await;
            let body = serde_json::to_vec(&charge).unwrap_or_default();
            let request = axum::http::Request::post(url.as_str())
                .header(header::CONTENT_TYPE, "application/json")
                .header("webhook-id", charge.charge_id.as_str())
                .body(Full::new(Bytes::from(body)));
            let outcome = match request {
                Err(_) => "failed",
                Ok(request) => {
                    let call = client.request(request);
                    match tokio::time::timeout(Duration::from_millis(CALLBACK_TIMEOUT_MS), call)
                        .await
                    {
                        Ok(Ok(response)) if response.status().is_success() => "delivered",
                        _ => "failed",
                    }
                }
            };
            metrics::counter!("ferrobank_psp_sim_callbacks_total", "outcome" => outcome)
                .increment(1);
        });
    }
}

/// The simulator's routes: `/v1/charges`, `/v1/charges/{key}`, `/v1/stats`, `/v1/admin/knobs`.
pub fn router(sim: PspSim) -> Router {
    Router::new()
        .route("/v1/charges", post(create_charge))
        .route("/v1/charges/{key}", get(get_charge))
        .route("/v1/stats", get(stats))
        .route("/v1/admin/knobs", get(get_knobs).post(set_knobs))
        .fallback(|| async { Problem::not_found("this route") })
        .with_state(sim)
}

async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request,
    max_body_bytes: usize,
) -> Result<T, Problem> {
    let body = axum::body::to_bytes(request.into_body(), max_body_bytes).await.map_err(|_| {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "Request body too large")
            .detail(format!("the body must be at most {max_body_bytes} bytes"))
    })?;
    serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Problem::invalid_body(e.to_string()),
        _ => Problem::new(StatusCode::BAD_REQUEST, "malformed_json", "Malformed JSON")
            .detail(e.to_string()),
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let missing = || {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            "Idempotency-Key required",
        )
        .detail(format!(
            "send an Idempotency-Key header of 1 to {MAX_KEY_BYTES} visible ASCII characters"
        ))
    };
    let value = headers.get("idempotency-key").ok_or_else(missing)?;
    let key = value.to_str().map_err(|_| missing())?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(missing());
    }
    Ok(key.to_owned())
}

fn conflict() -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "Idempotency-Key already used",
    )
    .detail("this Idempotency-Key was used with a different request body")
}

/// The answer to an outcome; `first` is the request that made it, others are replays.
fn respond(outcome: &Outcome, first: bool) -> Response {
    let mut response = match outcome {
        Outcome::Charged(c) | Outcome::ChargedHanging(c) => {
            let status = if first { StatusCode::CREATED } else { StatusCode::OK };
            (status, axum::Json(c)).into_response()
        }
        Outcome::Declined(c) => {
            Problem::new(StatusCode::PAYMENT_REQUIRED, "charge_declined", "Charge declined")
                .detail(format!("charge {} was declined; it will not be charged", c.charge_id))
                .into_response()
        }
        Outcome::Failed => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "gateway_error", "Payment gateway error")
                .detail("nothing was charged; retry with the same Idempotency-Key")
                .retry_after(1)
                .into_response()
        }
    };
    if !first && !matches!(outcome, Outcome::Failed) {
        response.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

async fn create_charge(State(sim): State<PspSim>, request: Request) -> Response {
    match charge(sim, request).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn charge(sim: PspSim, request: Request) -> Result<Response, Problem> {
    let key = idempotency_key(request.headers())?;
    let mut body: ChargeRequest = read_json(request, sim.limits.max_body_bytes).await?;
    body.validate()?;
    let (receiver, first) = {
        let mut inner = sim.lock();
        match inner.entries.get(&key) {
            Some(Entry::Done { request, outcome }) => {
                if *request != body {
                    return Err(conflict());
                }
                metrics::counter!("ferrobank_psp_sim_charges_total", "outcome" => "replayed")
                    .increment(1);
                return Ok(respond(outcome, false));
            }
            Some(Entry::InFlight { request, done }) => {
                if *request != body {
                    return Err(conflict());
                }
                (done.clone(), false)
            }
            None if inner.entries.len() >= sim.limits.max_charges => {
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too_many_charges",
                    "Simulator full",
                )
                .detail(format!("the simulator tracks at most {} charges", sim.limits.max_charges))
                .retry_after(1));
            }
            None => {
                let (sender, receiver) = watch::channel(None);
                let entry = Entry::InFlight { request: body.clone(), done: receiver.clone() };
                inner.entries.insert(key.clone(), entry);
                // Spawned: the attempt ends and is recorded even if this caller goes away.
                tokio::spawn(sim.clone().attempt(key.clone(), body, sender));
                (receiver, true)
            }
        }
    };
    let outcome = wait(receiver).await;
    if first && matches!(outcome, Outcome::ChargedHanging(_)) {
        // The dangerous case: charged, but the caller hears nothing within its timeout.
        let hang_ms = sim.lock().knobs.hang_ms;
        tokio::time::sleep(Duration::from_millis(hang_ms)).await;
    }
    Ok(respond(&outcome, first))
}

/// The outcome of an attempt in flight; a vanished attempt counts as a failure.
async fn wait(mut receiver: watch::Receiver<Option<Outcome>>) -> Outcome {
    match receiver.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Outcome::Failed),
        Err(_) => Outcome::Failed,
    }
}

async fn get_charge(State(sim): State<PspSim>, Path(key): Path<String>) -> Response {
    let inner = sim.lock();
    match inner.entries.get(&key) {
        Some(Entry::Done {
            outcome: Outcome::Charged(c) | Outcome::ChargedHanging(c) | Outcome::Declined(c),
            ..
        }) => axum::Json(c).into_response(),
        _ => Problem::not_found("a charge with this Idempotency-Key").into_response(),
    }
}

async fn stats(State(sim): State<PspSim>) -> axum::Json<Stats> {
    let inner = sim.lock();
    axum::Json(Stats {
        charged: inner.charged,
        max_charges_per_key: inner.times_charged.values().copied().max().unwrap_or(0),
        by_key: inner.times_charged.clone(),
    })
}

async fn get_knobs(State(sim): State<PspSim>) -> axum::Json<Knobs> {
    axum::Json(sim.lock().knobs.clone())
}

async fn set_knobs(State(sim): State<PspSim>, request: Request) -> Response {
    let patch: KnobsPatch = match read_json(request, sim.limits.max_body_bytes).await {
        Ok(patch) => patch,
        Err(problem) => return problem.into_response(),
    };
    let mut inner = sim.lock();
    let knobs = patch.apply(&inner.knobs);
    if let Err(e) = knobs.validate() {
        return Problem::invalid_body(e).into_response();
    }
    inner.knobs = knobs.clone();
    axum::Json(knobs).into_response()
}

/// SplitMix64: a tiny seeded generator, so a run with the same seed draws the same outcomes.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A draw from `0..bound` (0 when `bound` is 0); the modulo bias is irrelevant here.
    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next() % bound }
    }
}
