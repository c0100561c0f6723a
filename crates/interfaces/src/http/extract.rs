//! Extractors whose every rejection is a problem+json response, and the caller identity.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferrobank_adapters::oidc::TokenError;
use ferrobank_application::AccessDenied;
use ferrobank_domain::Principal;
use serde::de::DeserializeOwned;

use super::problem::{Challenge, Problem, ProblemCode};
use super::{AppState, REQUEST_ID};

/// JSON body. Malformed JSON is 400, a wrong or unknown field 422, a body over the limit
/// 413, a missing `Content-Type: application/json` 415.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

fn json_problem(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonDataError(e) => Problem::invalid_body(source_text(&e)),
        JsonRejection::JsonSyntaxError(e) => {
            Problem::new(StatusCode::BAD_REQUEST, "malformed_json", "Malformed JSON")
                .detail(source_text(&e))
        }
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
        )
        .detail("send the body as Content-Type: application/json"),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => body_too_large(),
        other => {
            Problem::new(other.status(), "bad_request", "Bad request").detail(other.body_text())
        }
    }
}

/// 413 for a body over the configured limit.
pub fn body_too_large() -> Problem {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "Request body too large")
}

/// The innermost error message: serde's, without axum's prefix.
fn source_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

/// Path parameters; an id that does not parse names a resource that cannot exist: 404.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Self(v))
            .map_err(|rejection: PathRejection| {
                Problem::not_found("the resource")
                    .detail(format!("no such resource: {}", source_text(&rejection)))
            })
    }
}

/// Query parameters; a malformed one is 400.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Self(v))
            .map_err(|rejection: QueryRejection| {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_query", "Invalid query parameter")
                    .detail(source_text(&rejection))
            })
    }
}

/// Who is calling: set once per request by [`authenticate`] from the bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off (no `[auth] issuer`): today's local, loopback-only mode.
    Anonymous,
    /// The principal behind a validated access token.
    User(Principal),
}

impl Caller {
    /// The namespace for this caller's idempotency keys: one per user, so two users'
    /// keys never collide.
    pub fn idempotency_scope(&self) -> String {
        match self {
            Self::Anonymous => "anonymous".to_owned(),
            Self::User(principal) => format!("user:{}", principal.subject),
        }
    }

    /// The principal the application layer authorizes; `None` when authentication is off.
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Self::Anonymous => None,
            Self::User(principal) => Some(principal),
        }
    }
}

/// Middleware of every `/api` operation: with authentication on, validates the bearer
/// token and records the `Caller` (401 without one or with a bad one, 503 while the
/// IdP's keys cannot be read); with it off, every caller is `Anonymous`. Every 401 and 403
/// answered below it (authentication here, refusals of the handlers) is handed to the
/// audit sink as `access.denied`, without waiting for it.
pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(sink) = state.audit_sink.clone() else {
        return authenticate_inner(&state, request, next).await.0;
    };
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let request_id =
        request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (response, subject) = authenticate_inner(&state, request, next).await;
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        let reason = response
            .extensions()
            .get::<ProblemCode>()
            .map_or_else(|| status.as_str().to_owned(), |code| code.0.clone());
        sink.denied(&AccessDenied {
            subject,
            method,
            path,
            status: status.as_u16(),
            reason,
            request_id,
            layer: "api",
        });
    }
    response
}

/// [`authenticate`] itself; also returns the validated subject, if any.
async fn authenticate_inner(
    state: &AppState,
    mut request: Request,
    next: Next,
) -> (Response, Option<String>) {
    let caller = match &state.auth {
        None => Caller::Anonymous,
        Some(validator) => match bearer_token(request.headers()) {
            None => {
                return (
                    Problem::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "Authentication required",
                    )
                    .detail("send an access token as Authorization: Bearer <token>")
                    .challenge(Challenge::Bearer)
                    .into_response(),
                    None,
                );
            }
            Some(token) => match validator.validate(token).await {
                Ok(principal) => Caller::User(principal),
                Err(TokenError::KeysUnavailable) => {
                    return (
                        Problem::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "idp_unavailable",
                            "Identity provider unavailable",
                        )
                        .detail("the token signing keys cannot be read right now; retry shortly")
                        .retry_after(5)
                        .into_response(),
                        None,
                    );
                }
                Err(error) => {
                    return (
                        Problem::new(
                            StatusCode::UNAUTHORIZED,
                            "invalid_token",
                            "Invalid access token",
                        )
                        .detail(error.to_string())
                        .challenge(Challenge::InvalidToken)
                        .into_response(),
                        None,
                    );
                }
            },
        },
    };
    let subject = caller.principal().map(|principal| principal.subject.clone());
    request.extensions_mut().insert(caller);
    (next.run(request).await, subject)
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Caller>() {
            Some(caller) => Ok(caller.clone()),
            None if state.auth.is_none() => Ok(Self::Anonymous),
            // A route outside `authenticate` must never run as anybody: fail closed.
            None => Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            )
            .challenge(Challenge::Bearer)),
        }
    }
}
