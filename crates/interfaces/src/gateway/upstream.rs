//! Calls to a route's destination: the in-process router or an HTTP upstream, with the
//! DestinationRule's connection pool limit and outlier detection (circuit breaking) and the
//! route's retries and timeouts, as Envoy applies them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, Uri};
use bytes::Bytes;
use ferrobank_adapters::istio::resources::{OutlierDetection, Retries, RetryOn, TrafficPolicy};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use rustls::ClientConfig;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Envoy's default `max_ejection_time`.
const MAX_EJECTION: Duration = Duration::from_secs(300);
/// Istio's default `baseEjectionTime`.
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Envoy's default retry circuit breaker (`max_retries`).
const DEFAULT_MAX_RETRIES: u32 = 3;
/// In-flight requests per destination when the DestinationRule does not say.
const DEFAULT_MAX_REQUESTS: u32 = 1024;
/// Connect timeout when the DestinationRule does not say (Istio's default is 10 s).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry back-off (Envoy's default base interval is 25 ms, doubling, jittered).
const RETRY_BASE_MS: u64 = 25;

/// Where a destination's requests go.
#[derive(Debug, Clone)]
pub enum Target {
    /// Served by this process's own router (`ferrobank up`).
    Local(Router),
    /// An HTTP base URL (`http://127.0.0.1:8081`).
    Remote(Uri),
}

/// Why a call produced no upstream answer; Envoy's response flags name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `UH`: the destination is ejected (circuit open).
    NoHealthyUpstream,
    /// `UO`: the connection pool limit was reached.
    Overflow,
    /// `UF`: connecting failed.
    ConnectFailure,
    /// `UC`: the connection broke before an answer.
    Reset,
    /// `UT`: the route's timeout passed.
    Timeout,
}

impl Failure {
    /// Envoy's response flag.
    pub fn flag(self) -> &'static str {
        match self {
            Failure::NoHealthyUpstream => "UH",
            Failure::Overflow => "UO",
            Failure::ConnectFailure => "UF",
            Failure::Reset => "UC",
            Failure::Timeout => "UT",
        }
    }

    /// Envoy's status and body for it.
    pub fn response(self) -> (StatusCode, &'static str) {
        match self {
            Failure::NoHealthyUpstream => (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
            Failure::Overflow => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ),
            Failure::ConnectFailure => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            ),
            Failure::Reset => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            ),
            Failure::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
        }
    }
}

/// Consecutive-error outlier detection for a destination with one endpoint: an open
/// circuit answers 503 `no healthy upstream` at once until its ejection time passes.
#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl Breaker {
    /// Whether a request may go out now.
    pub fn admits(&self, now: Instant) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.ejected_until.is_none_or(|until| now >= until)
    }

    /// Whether the circuit is open now (for the gauge).
    pub fn is_open(&self, now: Instant) -> bool {
        !self.admits(now)
    }

    /// Records an outcome: `status` of an answer, or `None` for a local failure
    /// (connect failure, reset, timeout), which counts as both error kinds (Envoy's
    /// default `split_external_local_origin_errors: false`). Returns true on ejection.
    pub fn record(
        &self,
        status: Option<StatusCode>,
        rule: &OutlierDetection,
        now: Instant,
    ) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let server_error = status.is_none_or(|s| s.is_server_error());
        let gateway_error = status.is_none_or(|s| {
            matches!(
                s,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            )
        });
        if !server_error {
            state.consecutive_5xx = 0;
            state.consecutive_gateway = 0;
            // Healthy again after an ejection: the multiplier starts over.
            if state.ejected_until.is_some_and(|until| now >= until) {
                state.ejected_until = None;
                state.ejections = 0;
            }
            return false;
        }
        state.consecutive_5xx += 1;
        if gateway_error {
            state.consecutive_gateway += 1;
        }
        // Istio's default: 5 consecutive 5xx; gateway errors only when configured.
        let by_5xx = state.consecutive_5xx >= rule.consecutive_5xx_errors.unwrap_or(5).max(1)
            && rule.consecutive_5xx_errors != Some(0);
        let by_gateway = rule
            .consecutive_gateway_errors
            .is_some_and(|n| n > 0 && state.consecutive_gateway >= n);
        if !(by_5xx || by_gateway) || state.ejected_until.is_some_and(|until| now < until) {
            return false;
        }
        state.ejections = state.ejections.saturating_add(1);
        let base = rule.base_ejection_time.unwrap_or(DEFAULT_BASE_EJECTION);
        let ejection = base.saturating_mul(state.ejections).min(MAX_EJECTION.max(base));
        state.ejected_until = Some(now + ejection);
        state.consecutive_5xx = 0;
        state.consecutive_gateway = 0;
        true
    }
}

/// The HTTP client of a destination: plaintext, or (with the mesh's certificates) mutual
/// TLS for `https://` upstreams, as the sidecar of the ingress gateway calls a STRICT one.
#[derive(Debug)]
enum HttpClient {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Mesh(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl HttpClient {
    fn request(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            HttpClient::Plain(client) => client.request(request),
            HttpClient::Mesh(client) => client.request(request),
        }
    }
}

/// One destination's client side: target, pool limits, breaker.
#[derive(Debug)]
pub struct Upstream {
    target: Target,
    client: HttpClient,
    in_flight: Semaphore,
    retries_in_flight: Semaphore,
    outlier: Option<OutlierDetection>,
    /// Shared across configuration reloads.
    pub breaker: std::sync::Arc<Breaker>,
}

impl Upstream {
    /// The client for `target` under `policy` (a DestinationRule's, or the defaults);
    /// `https://` targets are called with `tls` (the mesh's mutual TLS).
    pub fn new(
        target: Target,
        policy: Option<&TrafficPolicy>,
        breaker: std::sync::Arc<Breaker>,
        tls: Option<&ClientConfig>,
    ) -> Upstream {
        let pool = policy.map(|p| &p.connection_pool);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(
            pool.and_then(|p| p.tcp.connect_timeout).unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        ));
        if let Some(time) = pool.and_then(|p| p.tcp.tcp_keepalive.as_ref()).and_then(|k| k.time) {
            connector.set_keepalive(Some(time));
        }
        let mut builder = Client::builder(TokioExecutor::new());
        if let Some(idle) = pool.and_then(|p| p.http.idle_timeout) {
            builder.pool_idle_timeout(idle);
        }
        let max_requests = pool
            .map(|p| {
                p.http.http2_max_requests.unwrap_or(DEFAULT_MAX_REQUESTS)
                    + p.http.http1_max_pending_requests.unwrap_or(0)
            })
            .unwrap_or(DEFAULT_MAX_REQUESTS);
        let max_retries = pool.and_then(|p| p.http.max_retries).unwrap_or(DEFAULT_MAX_RETRIES);
        let client = match tls {
            None => HttpClient::Plain(builder.build(connector)),
            Some(tls) => {
                connector.enforce_http(false);
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.clone())
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(connector);
                HttpClient::Mesh(builder.build(connector))
            }
        };
        Upstream {
            target,
            client,
            in_flight: Semaphore::new(
                usize::try_from(max_requests).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS),
            ),
            retries_in_flight: Semaphore::new(
                usize::try_from(max_retries).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS),
            ),
            outlier: policy.and_then(|p| p.outlier_detection.clone()),
            breaker,
        }
    }

    /// Sends `parts` + `body` with the route's retries within `timeout`.
    pub async fn call(
        &self,
        parts: &axum::http::request::Parts,
        body: Bytes,
        retries: Option<&Retries>,
        timeout: Duration,
    ) -> Result<Response<Body>, Failure> {
        let deadline = Instant::now() + timeout;
        // Without a retry policy, Istio still retries what never reached the service.
        let (attempts, per_try, retry_on) = match retries {
            Some(r) => (r.attempts, r.per_try_timeout, r.retry_on.clone()),
            None => (2, None, vec![RetryOn::ConnectFailure, RetryOn::RefusedStream]),
        };
        let mut attempt = 0;
        // Held through the retried call, so `maxRetries` bounds retries in flight.
        let mut _retry_permit = None;
        loop {
            let now = Instant::now();
            if !self.breaker.admits(now) {
                return Err(Failure::NoHealthyUpstream);
            }
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                return Err(Failure::Timeout);
            }
            let try_timeout = per_try.map_or(remaining, |p| p.min(remaining));
            let result = {
                let _permit = self.in_flight.try_acquire().map_err(|_| Failure::Overflow)?;
                match tokio::time::timeout(try_timeout, self.once(parts, body.clone())).await {
                    Ok(result) => result,
                    Err(_) => Err(Failure::Timeout),
                }
            };
            if let Some(rule) = &self.outlier {
                let status = result.as_ref().ok().map(|r| r.status());
                if self.breaker.record(status, rule, Instant::now()) {
                    tracing::warn!(upstream = ?self.target_name(), "outlier detection ejected the upstream");
                }
            }
            let retry = attempt < attempts && should_retry(&result, &retry_on);
            if !retry {
                return result;
            }
            // Envoy's retry budget: a bounded number of retries in flight per upstream.
            let Ok(permit) = self.retries_in_flight.try_acquire() else {
                return result;
            };
            _retry_permit = Some(permit);
            attempt += 1;
            let backoff_ms = RETRY_BASE_MS.saturating_mul(1 << attempt.min(6));
            let jittered = rand_below(backoff_ms).max(1);
            tokio::time::sleep(
                Duration::from_millis(jittered)
                    .min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    fn target_name(&self) -> String {
        match &self.target {
            Target::Local(_) => "in-process".into(),
            Target::Remote(uri) => uri.to_string(),
        }
    }

    async fn once(
        &self,
        parts: &axum::http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Body>, Failure> {
        match &self.target {
            Target::Local(router) => {
                let mut request = Request::from_parts(parts.clone(), Body::from(body));
                *request.uri_mut() = parts.uri.clone();
                router.clone().oneshot(request).await.map_err(|never| match never {})
            }
            Target::Remote(base) => {
                let mut uri_parts = base.clone().into_parts();
                uri_parts.path_and_query = parts.uri.path_and_query().cloned();
                let uri = Uri::from_parts(uri_parts).map_err(|_| Failure::ConnectFailure)?;
                let mut request = Request::from_parts(parts.clone(), Full::new(body));
                *request.uri_mut() = uri;
                let response = self.client.request(request).await.map_err(|error| {
                    if error.is_connect() { Failure::ConnectFailure } else { Failure::Reset }
                })?;
                Ok(response.map(Body::new))
            }
        }
    }
}

fn should_retry(result: &Result<Response<Body>, Failure>, retry_on: &[RetryOn]) -> bool {
    match result {
        Ok(response) => {
            let status = response.status();
            retry_on.iter().any(|on| match on {
                RetryOn::FiveXx => status.is_server_error(),
                RetryOn::GatewayError => matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ),
                _ => false,
            })
        }
        Err(Failure::ConnectFailure) => retry_on.iter().any(|on| {
            matches!(on, RetryOn::ConnectFailure | RetryOn::FiveXx | RetryOn::GatewayError)
        }),
        Err(Failure::Reset) => retry_on
            .iter()
            .any(|on| matches!(on, RetryOn::Reset | RetryOn::RefusedStream | RetryOn::FiveXx)),
        // Per-try timeouts are retried under 5xx/gateway-error, as in Envoy.
        Err(Failure::Timeout) => {
            retry_on.iter().any(|on| matches!(on, RetryOn::FiveXx | RetryOn::GatewayError))
        }
        Err(Failure::NoHealthyUpstream | Failure::Overflow) => false,
    }
}

/// A uniform-ish number in `0..bound` for jitter (no need for a CSPRNG).
fn rand_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish() % bound.max(1)
}
