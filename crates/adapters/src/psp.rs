//! The payment gateway (PSP) over HTTP: `POST /v1/charges` with an `Idempotency-Key`, a
//! timeout per attempt, retries with exponential backoff and full jitter, and a circuit
//! breaker shared by every caller of one client.
//!
//! Every attempt of one charge carries the same key, so a retry after a timeout (the
//! gateway may have charged and answered late) replays the first charge instead of making
//! a second one. Only answers that cannot change on retry end the loop early: a charge, a
//! decline, or a 4xx refusal.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ferrobank_application::psp::{ChargeOutcome, ChargeRequest, PaymentGateway, PspError};
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Largest response body read from the gateway, in bytes; a longer one is a failed attempt.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest decline reason or refusal message kept from a response, in characters.
const MAX_REASON_CHARS: usize = 200;
/// Path of the charge endpoint, below the base URL.
const CHARGES_PATH: &str = "/v1/charges";

/// Transport settings of [`HttpPaymentGateway`].
#[derive(Debug, Clone)]
pub struct PspClientOptions {
    /// Longest one attempt may take (connect, answer and body), in milliseconds.
    pub timeout_ms: u64,
    /// Attempts per charge, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff ceiling before the second attempt, in milliseconds; doubles per attempt.
    pub initial_backoff_ms: u64,
    /// Largest backoff ceiling, in milliseconds.
    pub max_backoff_ms: u64,
    /// Consecutive failed attempts (errors, timeouts) that open the circuit (at least 1).
    pub breaker_failure_threshold: u32,
    /// How long an open circuit refuses calls before one trial, in milliseconds.
    pub breaker_open_ms: u64,
    /// TLS for an `https://` gateway; `None` allows `http://` only.
    pub tls: Option<rustls::ClientConfig>,
}

impl Default for PspClientOptions {
    fn default() -> Self {
        Self {
            timeout_ms: 2_000,
            max_attempts: 4,
            initial_backoff_ms: 50,
            max_backoff_ms: 2_000,
            breaker_failure_threshold: 5,
            breaker_open_ms: 5_000,
            tls: None,
        }
    }
}

/// What the circuit breaker lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// One trial call decides whether the circuit closes or opens again.
    HalfOpen,
    /// Calls are refused until the open period ends.
    Open,
}

impl BreakerState {
    /// The value of the `ferrobank_psp_circuit_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_since: Instant },
}

/// A consecutive-failure circuit breaker: closed -> open -> half-open (one trial call;
/// success closes, failure re-opens). Time is passed in, so tests need no sleeps.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    open_for: Duration,
    state: State,
}

impl CircuitBreaker {
    /// A closed breaker opening after `failure_threshold` (at least 1) consecutive failures
    /// for `open_ms` milliseconds.
    pub fn new(failure_threshold: u32, open_ms: u64) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            open_for: Duration::from_millis(open_ms),
            state: State::Closed { failures: 0 },
        }
    }

    /// The current state (an open circuit past its period stays `Open` until a call comes).
    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to make one call at `now`: `Err(retry_after_ms)` when the circuit refuses it.
    /// The first call after the open period is the trial; while it is out, others are
    /// refused. A trial that never reports (its caller gave up) is replaced after another
    /// open period, so the breaker cannot stay half-open forever.
    pub fn acquire(&mut self, now: Instant) -> Result<(), u64> {
        let until = match self.state {
            State::Closed { .. } => return Ok(()),
            State::Open { until } => until,
            State::HalfOpen { trial_since } => trial_since + self.open_for,
        };
        if now >= until {
            self.state = State::HalfOpen { trial_since: now };
            Ok(())
        } else {
            Err(millis_ceil(until - now))
        }
    }

    /// Reports a call that reached a working gateway (charged, declined or refused).
    pub fn on_success(&mut self) {
        match self.state {
            State::Closed { .. } | State::HalfOpen { .. } => {
                self.state = State::Closed { failures: 0 };
            }
            // A late answer to a call made before the circuit opened: the trial decides.
            State::Open { .. } => {}
        }
    }

    /// Reports a failed call (error, timeout, no connection) that ended at `now`.
    pub fn on_failure(&mut self, now: Instant) {
        match self.state {
            State::Closed { failures } => {
                let failures = failures.saturating_add(1);
                self.state = if failures >= self.failure_threshold {
                    State::Open { until: now + self.open_for }
                } else {
                    State::Closed { failures }
                };
            }
            State::HalfOpen { .. } => self.state = State::Open { until: now + self.open_for },
            State::Open { .. } => {}
        }
    }
}

/// Whole milliseconds, rounded up so that "retry after" is never too early.
fn millis_ceil(duration: Duration) -> u64 {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if duration.subsec_nanos().is_multiple_of(1_000_000) {
        millis
    } else {
        millis.saturating_add(1)
    }
}

/// The backoff ceiling before attempt `attempt + 1` (`attempt` >= 1): `initial * 2^(attempt-1)`,
/// capped at `max`.
fn backoff_ceiling_ms(initial_ms: u64, max_ms: u64, attempt: u32) -> u64 {
    let factor = 1u64.checked_shl(attempt.saturating_sub(1)).unwrap_or(u64::MAX);
    initial_ms.saturating_mul(factor).min(max_ms)
}

#[derive(Debug)]
enum HttpClient {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl HttpClient {
    fn request(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            HttpClient::Plain(client) => client.request(request),
            HttpClient::Tls(client) => client.request(request),
        }
    }
}

/// The JSON body of `POST /v1/charges`.
#[derive(Debug, Serialize)]
struct ChargeBody<'a> {
    amount_minor: i64,
    currency: &'a str,
    reference: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    beneficiary_iban: Option<&'a str>,
}

/// The fields of a charge answer this client reads.
#[derive(Debug, Deserialize)]
struct ChargeAnswer {
    charge_id: String,
}

/// The fields of an RFC 9457 problem this client reads.
#[derive(Debug, Default, Deserialize)]
struct ProblemAnswer {
    #[serde(rename = "type")]
    kind: Option<String>,
    title: Option<String>,
    detail: Option<String>,
}

impl ProblemAnswer {
    fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// The stable code: the last segment of the `type` URI.
    fn code(&self) -> Option<&str> {
        let kind = self.kind.as_deref()?;
        kind.rsplit('/').next().filter(|code| !code.is_empty())
    }

    fn describe(&self, status: StatusCode) -> String {
        let code = self.code().unwrap_or("unknown");
        let text = self.detail.as_deref().or(self.title.as_deref()).unwrap_or("");
        truncate(&format!("{} {code}: {text}", status.as_u16()))
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(MAX_REASON_CHARS).collect()
}

/// How one attempt ended.
#[derive(Debug)]
enum Attempt {
    /// A decision; retrying would not change it.
    Decided(ChargeOutcome),
    /// The gateway refused the request itself.
    Refused(String),
    /// Worth retrying with the same key; `timeout` tells timeouts from other failures.
    Transient { reason: String, timeout: bool },
}

impl Attempt {
    fn label(&self) -> &'static str {
        match self {
            Attempt::Decided(ChargeOutcome::Charged { .. }) => "charged",
            Attempt::Decided(ChargeOutcome::Declined { .. }) => "declined",
            Attempt::Refused(_) => "refused",
            Attempt::Transient { timeout: true, .. } => "timeout",
            Attempt::Transient { timeout: false, .. } => "error",
        }
    }
}

/// [`PaymentGateway`] over HTTP, against the API of `ferrobank psp-sim`.
///
/// Cheap to share behind an `Arc`: one connection pool and one circuit breaker serve every
/// caller.
#[derive(Debug)]
pub struct HttpPaymentGateway {
    charges_uri: Uri,
    client: HttpClient,
    timeout: Duration,
    max_attempts: u32,
    initial_backoff_ms: u64,
    max_backoff_ms: u64,
    breaker: Mutex<CircuitBreaker>,
}

impl HttpPaymentGateway {
    /// A client of the gateway at `base_url` (`http://host:port`, optionally with a path
    /// prefix); refuses bad URLs and option values.
    pub fn new(base_url: &str, options: PspClientOptions) -> Result<Self, String> {
        let base = url::Url::parse(base_url).map_err(|e| format!("PSP base URL: {e}"))?;
        match (base.scheme(), &options.tls) {
            ("http", _) | ("https", Some(_)) => {}
            ("https", None) => return Err("PSP base URL: https needs a TLS configuration".into()),
            (scheme, _) => return Err(format!("PSP base URL: unsupported scheme {scheme}")),
        }
        if base.host().is_none() || base.query().is_some() || base.fragment().is_some() {
            return Err("PSP base URL: needs a host and no query or fragment".into());
        }
        if options.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if options.timeout_ms == 0 {
            return Err("timeout_ms must be greater than 0".into());
        }
        if options.breaker_failure_threshold == 0 {
            return Err("breaker_failure_threshold must be at least 1".into());
        }
        if options.initial_backoff_ms > options.max_backoff_ms {
            return Err("initial_backoff_ms must not exceed max_backoff_ms".into());
        }
        let charges = format!("{}{CHARGES_PATH}", base.as_str().trim_end_matches('/'));
        let charges_uri = Uri::try_from(charges).map_err(|e| format!("PSP base URL: {e}"))?;
        let timeout = Duration::from_millis(options.timeout_ms);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let builder = Client::builder(TokioExecutor::new());
        let client = match options.tls {
            None => HttpClient::Plain(builder.build(connector)),
            Some(tls) => {
                connector.enforce_http(false);
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(connector);
                HttpClient::Tls(builder.build(connector))
            }
        };
        let breaker =
            CircuitBreaker::new(options.breaker_failure_threshold, options.breaker_open_ms);
        metrics::gauge!("ferrobank_psp_circuit_state").set(breaker.state().gauge());
        Ok(Self {
            charges_uri,
            client,
            timeout,
            max_attempts: options.max_attempts,
            initial_backoff_ms: options.initial_backoff_ms,
            max_backoff_ms: options.max_backoff_ms,
            breaker: Mutex::new(breaker),
        })
    }

    /// The circuit breaker's state now.
    pub fn circuit_state(&self) -> BreakerState {
        self.with_breaker(|breaker| breaker.state())
    }

    fn with_breaker<T>(&self, f: impl FnOnce(&mut CircuitBreaker) -> T) -> T {
        // The breaker holds plain data; a panic elsewhere leaves it usable.
        let mut breaker = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        let result = f(&mut breaker);
        metrics::gauge!("ferrobank_psp_circuit_state").set(breaker.state().gauge());
        result
    }

    /// One POST, bounded by the attempt timeout (connect, headers and body).
    async fn attempt(&self, key: &HeaderValue, body: &Bytes) -> Attempt {
        let request = Request::post(self.charges_uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, application/problem+json")
            .header("idempotency-key", key.clone())
            .body(Full::new(body.clone()));
        let request = match request {
            Ok(request) => request,
            Err(e) => return Attempt::Refused(format!("cannot build the request: {e}")),
        };
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                // The source says what broke (refused, reset...); the top level only "client error".
                let source = std::error::Error::source(&e).map(ToString::to_string);
                format!("{e}: {}", source.unwrap_or_default())
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts.status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Attempt::Transient {
                reason: format!("no answer within {} ms", self.timeout.as_millis()),
                timeout: true,
            },
            Ok(Err(reason)) => Attempt::Transient { reason, timeout: false },
            Ok(Ok((status, body))) => classify(status, &body),
        }
    }
}

/// The meaning of a complete answer.
fn classify(status: StatusCode, body: &[u8]) -> Attempt {
    match status {
        StatusCode::OK | StatusCode::CREATED => {
            match serde_json::from_slice::<ChargeAnswer>(body) {
                Ok(answer) if !answer.charge_id.is_empty() => {
                    Attempt::Decided(ChargeOutcome::Charged { charge_id: answer.charge_id })
                }
                // A replay with the same key will bring the same charge, readable or not.
                _ => Attempt::Transient {
                    reason: format!("{} answer without a charge_id", status.as_u16()),
                    timeout: false,
                },
            }
        }
        StatusCode::PAYMENT_REQUIRED => {
            let problem = ProblemAnswer::parse(body);
            let reason = truncate(problem.code().unwrap_or("declined"));
            Attempt::Decided(ChargeOutcome::Declined { reason })
        }
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => Attempt::Transient {
            reason: ProblemAnswer::parse(body).describe(status),
            timeout: false,
        },
        s if s.is_server_error() => Attempt::Transient {
            reason: ProblemAnswer::parse(body).describe(status),
            timeout: false,
        },
        s => Attempt::Refused(ProblemAnswer::parse(body).describe(s)),
    }
}

#[async_trait]
impl PaymentGateway for HttpPaymentGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, PspError> {
        let key = HeaderValue::from_str(&request.idempotency_key)
            .ok()
            .filter(|_| {
                !request.idempotency_key.is_empty()
                    && request.idempotency_key.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| PspError::Refused("the idempotency key must be visible ASCII".into()))?;
        let body = serde_json::to_vec(&ChargeBody {
            amount_minor: request.amount_minor,
            currency: &request.currency,
            reference: &request.reference,
            beneficiary_iban: request.beneficiary_iban.as_deref(),
        })
        .map_err(|e| PspError::Refused(format!("cannot encode the charge: {e}")))?;
        let body = Bytes::from(body);
        let mut last_failure = String::new();
        for attempt in 1..=self.max_attempts {
            if let Err(retry_after_ms) = self.with_breaker(|b| b.acquire(Instant::now())) {
                return Err(if attempt == 1 {
                    PspError::CircuitOpen { retry_after_ms }
                } else {
                    // Earlier attempts reached the gateway: the charge may have happened.
                    PspError::Unavailable(format!(
                        "circuit opened after {} attempts; last: {last_failure}",
                        attempt - 1
                    ))
                });
            }
            let started = Instant::now();
            let outcome = self.attempt(&key, &body).await;
            metrics::histogram!("ferrobank_psp_call_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("ferrobank_psp_calls_total", "outcome" => outcome.label())
                .increment(1);
            match outcome {
                Attempt::Decided(decision) => {
                    self.with_breaker(CircuitBreaker::on_success);
                    return Ok(decision);
                }
                Attempt::Refused(reason) => {
                    // The gateway answered sensibly: it works, the request is the problem.
                    self.with_breaker(CircuitBreaker::on_success);
                    tracing::warn!(key = %request.idempotency_key, %reason, "PSP refused a charge");
                    return Err(PspError::Refused(reason));
                }
                Attempt::Transient { reason, .. } => {
                    self.with_breaker(|b| b.on_failure(Instant::now()));
                    tracing::debug!(key = %request.idempotency_key, attempt, %reason, "PSP attempt failed");
                    last_failure = reason;
                }
            }
            if attempt < self.max_attempts {
                // Full jitter: sleep a uniform draw from [0, min(cap, base * 2^attempt)],
                // which spreads competing retries best (AWS Architecture Blog, "Exponential
                // Backoff And Jitter", Marc Brooker, 2015).
                let ceiling =
                    backoff_ceiling_ms(self.initial_backoff_ms, self.max_backoff_ms, attempt);
                let sleep_ms = rand::thread_rng().gen_range(0..=ceiling);
                tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
            }
        }
        Err(PspError::Unavailable(format!(
            "{} attempts failed; last: {last_failure}",
            self.max_attempts
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(3, 1_000);
        breaker.on_failure(t0);
        breaker.on_failure(t0);
        breaker.on_success();
        breaker.on_failure(t0);
        breaker.on_failure(t0);
        assert_eq!(breaker.state(), BreakerState::Closed, "a success resets the count");
        assert_eq!(breaker.acquire(t0), Ok(()));
        breaker.on_failure(t0);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.acquire(t0), Err(1_000));
        assert_eq!(breaker.acquire(t0 + ms(400)), Err(600));
    }

    #[test]
    fn one_trial_after_the_open_period_and_success_closes() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(1, 1_000);
        breaker.on_failure(t0);
        assert_eq!(breaker.acquire(t0 + ms(1_000)), Ok(()), "the trial");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.acquire(t0 + ms(1_001)).is_err(), "only one trial at a time");
        breaker.on_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.acquire(t0 + ms(1_002)), Ok(()));
    }

    #[test]
    fn a_failed_trial_opens_again_for_a_full_period() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(2, 1_000);
        breaker.on_failure(t0);
        breaker.on_failure(t0);
        assert_eq!(breaker.acquire(t0 + ms(1_500)), Ok(()));
        breaker.on_failure(t0 + ms(1_600));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.acquire(t0 + ms(1_600)), Err(1_000));
        assert_eq!(breaker.acquire(t0 + ms(2_600)), Ok(()));
    }

    #[test]
    fn an_abandoned_trial_is_replaced_after_an_open_period() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(1, 1_000);
        breaker.on_failure(t0);
        assert_eq!(breaker.acquire(t0 + ms(1_000)), Ok(()));
        assert_eq!(breaker.acquire(t0 + ms(1_999)), Err(1));
        assert_eq!(breaker.acquire(t0 + ms(2_000)), Ok(()), "a new trial");
    }

    #[test]
    fn late_answers_while_open_change_nothing() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(1, 1_000);
        breaker.on_failure(t0);
        breaker.on_success();
        breaker.on_failure(t0 + ms(900));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.acquire(t0 + ms(1_000)), Ok(()), "the first failure set the period");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(millis_ceil(Duration::from_micros(1_500)), 2);
        assert_eq!(millis_ceil(ms(7)), 7);
        assert_eq!(millis_ceil(Duration::ZERO), 0);
    }

    #[test]
    fn backoff_ceilings_double_up_to_the_cap() {
        let ceilings: Vec<u64> = (1..=7).map(|a| backoff_ceiling_ms(50, 2_000, a)).collect();
        assert_eq!(ceilings, [50, 100, 200, 400, 800, 1_600, 2_000]);
        assert_eq!(backoff_ceiling_ms(50, 2_000, u32::MAX), 2_000);
    }

    #[test]
    fn answers_are_classified() {
        let charged = classify(StatusCode::CREATED, br#"{"charge_id":"ch_1","status":"x"}"#);
        assert!(matches!(
            charged,
            Attempt::Decided(ChargeOutcome::Charged { charge_id }) if charge_id == "ch_1"
        ));
        let declined = classify(
            StatusCode::PAYMENT_REQUIRED,
            br#"{"type":"https://errors.example/charge_declined","status":402}"#,
        );
        assert!(matches!(
            declined,
            Attempt::Decided(ChargeOutcome::Declined { reason }) if reason == "charge_declined"
        ));
        let reused = classify(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"type":"https://errors.example/idempotency_key_reused","detail":"d"}"#,
        );
        assert!(matches!(reused, Attempt::Refused(r) if r.contains("idempotency_key_reused")));
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, b"not json"),
            Attempt::Transient { timeout: false, .. }
        ));
        assert!(matches!(classify(StatusCode::OK, b"{}"), Attempt::Transient { .. }));
        assert!(matches!(classify(StatusCode::NOT_FOUND, b""), Attempt::Refused(_)));
    }
}
