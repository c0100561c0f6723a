//! RFC 9457 problem details: every error the API returns, with a stable `type` URI.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferrobank_application::{LedgerError, StoreError};
use ferrobank_domain::TransferError;
use serde::Serialize;
use utoipa::ToSchema;

/// Base of every problem `type`; the last segment is the stable error code.
pub const PROBLEM_BASE: &str = "https://ferrobank.dev/problems/";

/// Media type of problem responses (RFC 9457 section 3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Longest `detail`, in characters: parser messages quote the input (a field name, a
/// string), and a problem must stay small whatever the client sent.
const MAX_DETAIL_CHARS: usize = 512;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// Stable URI identifying the problem type; its last segment is the error code.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short, human-readable summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation of this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request id (also in the `x-request-id` header), added by the API layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip)]
    retry_after_s: Option<u32>,
    #[serde(skip)]
    www_authenticate: Option<Challenge>,
}

/// An RFC 6750 §3 `WWW-Authenticate` challenge of a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// No credentials were sent.
    Bearer,
    /// The sent token was refused.
    InvalidToken,
}

impl Challenge {
    fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Challenge::Bearer => "Bearer realm=\"ferrobank\"",
            Challenge::InvalidToken => "Bearer realm=\"ferrobank\", error=\"invalid_token\"",
        })
    }
}

impl Problem {
    /// A problem with code `code` (the last segment of its type URI).
    pub fn new(status: StatusCode, code: &str, title: &str) -> Self {
        Self {
            type_uri: format!("{PROBLEM_BASE}{code}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            request_id: None,
            retry_after_s: None,
            www_authenticate: None,
        }
    }

    /// Adds the occurrence-specific explanation.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if let Some((cut, _)) = detail.char_indices().nth(MAX_DETAIL_CHARS) {
            detail.truncate(cut);
            detail.push('…');
        }
        self.detail = Some(detail);
        self
    }

    /// Asks the client to come back after `seconds` (sets `Retry-After`).
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    /// Adds a `WWW-Authenticate` challenge (RFC 6750 §3) to a 401.
    pub fn challenge(mut self, challenge: Challenge) -> Self {
        self.www_authenticate = Some(challenge);
        self
    }

    /// The status as a `StatusCode`.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// 404 for a resource named in the URL.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "Not found")
            .detail(format!("{what} does not exist"))
    }

    /// 422 for a body that parsed as JSON but is not a valid request.
    pub fn invalid_body(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", "Invalid request body")
            .detail(detail)
    }
}

/// The stable code of a problem response (the last segment of its `type`), kept in the
/// response's extensions for middleware (the audit of denied requests) to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProblemCode(pub String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let code = ProblemCode(
            self.type_uri.strip_prefix(PROBLEM_BASE).unwrap_or(&self.type_uri).to_owned(),
        );
        let retry_after = self.retry_after_s;
        let challenge = self.www_authenticate;
        let mut response = (status, axum::Json(self)).into_response();
        response.extensions_mut().insert(code);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = challenge {
            headers.insert(header::WWW_AUTHENTICATE, challenge.header_value());
        }
        response
    }
}

impl From<TransferError> for Problem {
    fn from(error: TransferError) -> Self {
        use TransferError as E;
        let status = match error {
            E::ExistsWithDifferentFields
            | E::PendingTransferAlreadyPosted
            | E::PendingTransferAlreadyVoided
            | E::PendingTransferExpired
            | E::PendingTransferNotPending => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let title = match error {
            E::ExceedsCredits => "Insufficient funds",
            E::ExistsWithDifferentFields => "Transfer id already used",
            E::CurrencyMismatch | E::AccountsMustHaveSameCurrency => "Wrong currency",
            _ => "Transfer refused",
        };
        Problem::new(status, error.code(), title).detail(error.to_string())
    }
}

impl From<LedgerError> for Problem {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::Busy => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "Ledger busy")
                    .detail("the transfer queue is full; retry with the same ids")
                    .retry_after(1)
            }
            LedgerError::ShuttingDown => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "Shutting down")
                    .retry_after(1)
            }
            LedgerError::TooManyTransfers { .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too_many_transfers",
                "Too many transfers",
            )
            .detail(error.to_string()),
            LedgerError::Forbidden => Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
                .detail(error.to_string()),
            LedgerError::AccountExistsWithDifferentFields => Problem::new(
                StatusCode::CONFLICT,
                "account_exists_with_different_fields",
                "Account id already used",
            )
            .detail(error.to_string()),
            LedgerError::Store(store) => store.into(),
        }
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(_) | StoreError::Unavailable(_) => {
                tracing::warn!(%error, "storage temporarily unavailable");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Temporarily unavailable",
                )
                .detail("the database did not answer; retry with the same ids")
                .retry_after(1)
            }
            StoreError::SchemaMismatch { .. } | StoreError::Corrupt(_) => {
                // Never leak internals; the log has the details.
                tracing::error!(%error, "internal storage error");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
            }
        }
    }
}
