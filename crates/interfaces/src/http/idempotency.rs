//! `Idempotency-Key` for every POST (draft-ietf-httpapi-idempotency-key-header-06):
//! the first response is stored and replayed; the same key with another request is 422;
//! a key whose first request is still running is 409. Responses of 5xx are not stored,
//! so a retry runs again (transfers are idempotent by id underneath).

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferrobank_application::KeyClaim;
use sha2::{Digest, Sha256};

use super::AppState;
use super::extract::{Caller, body_too_large};
use super::problem::{PROBLEM_JSON, Problem};

/// The request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a replayed response.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// Longest accepted key.
const MAX_KEY_LEN: usize = 255;
/// A claim is held for the request timeout plus this margin. No request outlives its
/// timeout, so a claim older than that was abandoned (its server crashed) and may be
/// taken over: retries after a crash wait at most this long, never forever.
const LEASE_MARGIN_MS: i64 = 5_000;
/// Largest response body stored for replay.
const MAX_STORED_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Middleware for POST routes.
pub async fn idempotency(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get(IDEMPOTENCY_KEY) else {
        return next.run(request).await;
    };
    let key = match key.to_str() {
        Ok(k)
            if !k.is_empty()
                && k.len() <= MAX_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            k.to_owned()
        }
        _ => {
            return Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "Invalid Idempotency-Key",
            )
            .detail(format!("use 1 to {MAX_KEY_LEN} visible ASCII characters, e.g. a UUID"))
            .into_response();
        }
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, state.limits.max_body_bytes).await else {
        return body_too_large().into_response();
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update([0]);
    hasher.update(parts.uri.path());
    hasher.update([0]);
    hasher.update(&bytes);
    let request_hash: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let scope = caller.idempotency_scope();
    let now_ms = state.clock.now_ms();
    let timeout_ms = i64::try_from(state.limits.request_timeout_ms).unwrap_or(i64::MAX);
    let lease_ms = timeout_ms.saturating_add(LEASE_MARGIN_MS);
    let claim = state.idempotency.claim(&scope, &key, &request_hash, now_ms, lease_ms).await;
    match claim {
        Err(error) => Problem::from(error).into_response(),
        Ok(KeyClaim::Mismatch) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "Idempotency-Key reused",
        )
        .detail("this key was used for a different request")
        .into_response(),
        Ok(KeyClaim::InFlight) => {
            Problem::new(StatusCode::CONFLICT, "idempotency_key_in_flight", "Request in progress")
                .detail("a request with this key is still being processed; retry later")
                .retry_after(1)
                .into_response()
        }
        Ok(KeyClaim::Replay { status, body }) => replay(status, body),
        Ok(KeyClaim::Claimed) => {
            let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
            finish(&state, &scope, &key, response).await
        }
    }
}

async fn finish(state: &AppState, scope: &str, key: &str, response: Response) -> Response {
    let status = response.status();
    let (parts, body) = response.into_parts();
    let bytes = match to_bytes(body, MAX_STORED_RESPONSE_BYTES).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%error, "response too large to store for idempotent replay");
            let _ = state.idempotency.release(scope, key).await;
            return Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
                .into_response();
        }
    };
    let stored = if status.is_server_error() {
        state.idempotency.release(scope, key).await
    } else {
        let text = String::from_utf8_lossy(&bytes);
        state.idempotency.finish(scope, key, status.as_u16(), &text).await
    };
    if let Err(error) = stored {
        // The effect happened; the client keeps the response. A retry with this key
        // after the lease runs again, and resources are idempotent by their ids.
        tracing::warn!(%error, "could not store the idempotent response");
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let content_type = if status.is_success() { "application/json" } else { PROBLEM_JSON };
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}
