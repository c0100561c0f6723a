//! Health, readiness, Prometheus metrics, access logs and request ids in problems.

use std::sync::OnceLock;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tracing::Instrument;

use super::problem::{PROBLEM_JSON, Problem};
use super::{AppState, REQUEST_ID};

/// Largest problem body rewritten to carry the request id.
const MAX_PROBLEM_BYTES: usize = 64 * 1024;

/// The process-wide Prometheus recorder (installed once; later calls share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds =
                [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
            let sizes = [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_transfers".into()), &sizes)
                });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Fails only if another recorder is installed (e.g. by an embedding program).
            let _ = metrics::set_global_recorder(recorder);
            metrics::describe_counter!(
                "banking_database_connection_errors_total",
                "Database connection failures (I/O, pool timeouts)"
            );
            // Exported from the start at 0, so `rate(...)` in the alert rules has a series.
            metrics::counter!("banking_database_connection_errors_total").increment(0);
            handle
        })
        .clone()
}

/// Liveness: the process runs.
pub async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database answers.
pub async fn ready(State(state): State<AppState>) -> Response {
    match state.ledger.ping().await {
        Ok(()) => Json(json!({ "status": "ready", "database": "ok" })).into_response(),
        Err(error) => {
            tracing::warn!(%error, "not ready");
            metrics::counter!("banking_database_connection_errors_total").increment(1);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not_ready", "database": "unavailable" })),
            )
                .into_response()
        }
    }
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!("ferrobank_ledger_queue_depth").set(state.ledger.queue_depth() as f64);
    let mut response = state.metrics.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    response
}

/// 404 for unknown paths.
pub async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "Not found").detail("no such endpoint")
}

/// 405 for a known path with another method.
pub async fn method_not_allowed() -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed")
}

/// Per-route request counts and latencies, and one JSON access-log line per request.
pub async fn access_log_and_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // Every log line written while handling the request carries its id.
    let span = tracing::info_span!("request", request_id = %request_id);
    let response = next.run(request).instrument(span).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16().to_string();
    let labels =
        [("method", method.to_string()), ("route", route.clone()), ("status", status.clone())];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels[..2])
        .record(elapsed.as_secs_f64());
    tracing::info!(
        target: "access",
        request_id,
        method = %method,
        route,
        status,
        latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        "request"
    );
    response
}

/// Answers 503 problem+json when a request runs past `request_timeout_ms`. A transfer
/// that was already queued may still commit; retrying with the same id is safe.
pub async fn request_timeout(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit = std::time::Duration::from_millis(state.limits.request_timeout_ms);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "Request timed out")
            .detail("the request took too long; retry with the same ids or Idempotency-Key")
            .retry_after(1)
            .into_response(),
    }
}

/// Puts the request id into every problem body (STYLE: the request id in every error).
pub async fn problem_request_id(request: Request, next: Next) -> Response {
    let request_id = request.headers().get(REQUEST_ID).cloned();
    let response = next.run(request).await;
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    let Some(request_id) = request_id.filter(|_| is_problem) else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_PROBLEM_BYTES).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut problem)) => {
            let id = request_id.to_str().unwrap_or_default().to_owned();
            problem.insert("request_id".into(), serde_json::Value::String(id));
            let text = serde_json::Value::Object(problem).to_string();
            parts.headers.remove(header::CONTENT_LENGTH);
            Body::from(text)
        }
        _ => Body::from(bytes),
    };
    Response::from_parts(parts, body)
}
