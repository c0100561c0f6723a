//! Extractors whose every rejection is a problem+json response, and the caller identity.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::problem::Problem;

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

/// Who is calling. Until the identity service lands every caller is anonymous and the
/// server binds to 127.0.0.1; handlers already take a `Caller` so that token validation
/// and ownership checks slot in here without touching them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No authenticated identity.
    Anonymous,
}

impl Caller {
    /// The namespace for this caller's idempotency keys.
    pub fn idempotency_scope(&self) -> &str {
        match self {
            Self::Anonymous => "anonymous",
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::Anonymous)
    }
}
