//! Handlers of `/api/payments` and `/api/risk/reviews`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrobank_application::bus::is_traceparent;
use ferrobank_application::payments::{
    CreatePayment, Created, PaymentPage, PaymentQuery, PaymentService, PaymentsError,
};
use ferrobank_domain::{
    AccountId, Amount, Beneficiary, Currency, NewPayment, Payment, PaymentId, PaymentStatus,
    Reference,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::idempotency::IDEMPOTENCY_KEY;
use super::ledger::{derived_id, invalid_query};
use super::problem::Problem;

type ApiResult = Result<Response, Problem>;

/// Default page size of the lists.
const DEFAULT_LIMIT: u32 = 50;

/// `POST /api/payments`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePaymentRequest {
    /// Optional client-chosen id; by default derived from the Idempotency-Key.
    pub id: Option<Uuid>,
    /// One of the caller's accounts, debited.
    pub debtor_account: Uuid,
    /// `{"kind": "internal", "account": uuid}` or `{"kind": "external", "iban": "DE89...",
    /// "name": "...", "country": "DE"}`; the IBAN's checksum is verified.
    #[schema(value_type = Object)]
    pub beneficiary: Beneficiary,
    /// Amount in minor units of `currency` (integer, > 0).
    pub amount: i64,
    /// ISO 4217 code; must be the debtor account's currency.
    pub currency: String,
    /// Remittance reference (SEPA characters, at most 140).
    #[serde(default)]
    pub reference: String,
}

/// A payment.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentDto {
    /// The payment's id.
    pub payment_id: Uuid,
    /// The token subject of the debtor account's owner.
    pub owner: String,
    /// The account debited.
    pub debtor_account: Uuid,
    /// Who receives the money.
    #[schema(value_type = Object)]
    pub beneficiary: Beneficiary,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Remittance reference.
    pub reference: String,
    /// `pending_risk`, `held_for_review`, `pending`, `processing`, `completed`, `failed`,
    /// `cancelled` or `rejected`.
    pub status: String,
    /// The risk decision: `{"outcome": "allow"|"review"|"deny", "reasons": [{"code", "outcome"}]}`.
    #[schema(value_type = Object)]
    pub risk: serde_json::Value,
    /// The ledger hold (pending transfer) of the payment.
    pub hold_id: Option<Uuid>,
    /// Why it failed or was rejected.
    pub failure_code: Option<String>,
    /// The analyst who reviewed it.
    pub reviewer: Option<String>,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds of the last status change.
    pub updated_at_ms: i64,
}

impl From<Payment> for PaymentDto {
    fn from(p: Payment) -> Self {
        Self {
            payment_id: p.id.0,
            owner: p.owner,
            debtor_account: p.debtor_account.0,
            beneficiary: p.beneficiary,
            amount: p.amount.minor_units(),
            currency: p.currency.code().to_owned(),
            reference: p.reference.as_str().to_owned(),
            status: p.status.as_str().to_owned(),
            risk: serde_json::to_value(&p.risk).unwrap_or_default(),
            hold_id: p.hold_id.map(|id| id.0),
            failure_code: p.failure_code,
            reviewer: p.reviewer,
            created_at_ms: p.created_at_ms,
            updated_at_ms: p.updated_at_ms,
        }
    }
}

/// A page of payments, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentPageDto {
    /// The payments.
    pub payments: Vec<PaymentDto>,
    /// Pass as `cursor` for the next (older) page; absent at the end.
    pub next_cursor: Option<String>,
}

impl From<PaymentPage> for PaymentPageDto {
    fn from(page: PaymentPage) -> Self {
        Self {
            payments: page.payments.into_iter().map(PaymentDto::from).collect(),
            next_cursor: page.next_before.map(|seq| seq.to_string()),
        }
    }
}

/// Filters of `GET /api/payments`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PaymentListQuery {
    /// The debtor account (required for customers).
    pub account: Option<Uuid>,
    /// Only payments in this status (comma-separated list allowed).
    pub status: Option<String>,
    /// Created at or after (Unix milliseconds).
    pub from_ms: Option<i64>,
    /// Created before (Unix milliseconds).
    pub until_ms: Option<i64>,
    /// Page size, 1..=200 (default 50).
    pub limit: Option<u32>,
    /// Cursor from the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// Cursor and page size of the review queue.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Page size, 1..=200 (default 50).
    pub limit: Option<u32>,
    /// Cursor from the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

fn service(state: &AppState) -> Result<&PaymentService, Problem> {
    state.payments.as_ref().ok_or_else(|| Problem::not_found("this route"))
}

fn cursor(cursor: Option<String>) -> Result<Option<i64>, Problem> {
    cursor
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| invalid_query("cursor is not one this API issued"))
        })
        .transpose()
}

fn limit(limit: Option<u32>, max: u32) -> Result<u32, Problem> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=max).contains(&limit) {
        return Err(invalid_query(format!("limit must be 1 to {max}")));
    }
    Ok(limit)
}

/// The request's W3C `traceparent`, or a new trace when it carries none (or a bad one).
fn traceparent(headers: &HeaderMap) -> String {
    match headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        Some(value) if is_traceparent(value) => value.to_owned(),
        _ => {
            let trace = Uuid::new_v4().simple().to_string();
            let span = &Uuid::new_v4().simple().to_string()[..16];
            format!("00-{trace}-{span}-01")
        }
    }
}

/// Make a payment. `Idempotency-Key` is required: a retry with the same key returns the
/// first answer and never pays twice.
#[utoipa::path(post, path = "/api/payments", tag = "payments",
    request_body = CreatePaymentRequest,
    responses(
        (status = 201, description = "Created: pending, held for review, or rejected by the risk check", body = PaymentDto),
        (status = 200, description = "The payment of this key already existed", body = PaymentDto),
        (status = 400, description = "Idempotency-Key missing", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Debtor account not found (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid payment, insufficient funds, wrong currency", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_payment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreatePaymentRequest>,
) -> ApiResult {
    let service = service(&state)?;
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "idempotency_key_required",
                "Idempotency-Key required",
            )
            .detail("payments need an Idempotency-Key header of 1 to 255 visible ASCII characters")
        })?;
    let amount =
        Amount::new(body.amount).map_err(|e| Problem::invalid_body(format!("amount: {e}")))?;
    let currency = Currency::parse(&body.currency)
        .map_err(|e| Problem::invalid_body(format!("currency: {e}")))?;
    let reference = Reference::parse(&body.reference).map_err(|e| {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), "Invalid reference")
            .detail(e.to_string())
    })?;
    let id = body
        .id
        .unwrap_or_else(|| derived_id(&format!("payment:{}", caller.idempotency_scope()), key));
    let new = NewPayment::new(
        PaymentId(id),
        AccountId(body.debtor_account),
        body.beneficiary,
        amount,
        currency,
        reference,
    )
    .map_err(|e| {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), "Invalid payment")
            .detail(e.to_string())
    })?;
    let request = CreatePayment {
        new,
        idempotency_key: key.to_owned(),
        traceparent: Some(traceparent(&headers)),
    };
    Ok(match service.create(caller.principal(), request).await? {
        Created::New(p) => (StatusCode::CREATED, Json(PaymentDto::from(p))).into_response(),
        Created::Exists(p) => (StatusCode::OK, Json(PaymentDto::from(p))).into_response(),
    })
}

/// One payment (its owner, banking admins, risk analysts).
#[utoipa::path(get, path = "/api/payments/{id}", tag = "payments",
    params(("id" = Uuid, Path, description = "Payment id")),
    responses(
        (status = 200, body = PaymentDto),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_payment(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult {
    let payment = service(&state)?.get(caller.principal(), PaymentId(id)).await?;
    Ok(Json(PaymentDto::from(payment)).into_response())
}

/// The payments of an account, newest first, with filters and a cursor.
#[utoipa::path(get, path = "/api/payments", tag = "payments",
    params(PaymentListQuery),
    responses(
        (status = 200, body = PaymentPageDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A customer must name one of their accounts", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_payments(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PaymentListQuery>,
) -> ApiResult {
    let service = service(&state)?;
    let statuses = match &query.status {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|s| {
                PaymentStatus::parse(s.trim())
                    .ok_or_else(|| invalid_query(format!("status `{s}` is not a payment status")))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    if statuses.len() > PaymentStatus::ALL.len() {
        return Err(invalid_query("too many statuses"));
    }
    let query = PaymentQuery {
        account: query.account.map(AccountId),
        statuses,
        from_ms: query.from_ms,
        until_ms: query.until_ms,
        before_seq: cursor(query.cursor)?,
        limit: limit(query.limit, service.limits().max_page)?,
    };
    let page = service.list(caller.principal(), query).await?;
    Ok(Json(PaymentPageDto::from(page)).into_response())
}

/// Cancel a payment while it is still pending; its hold is released.
#[utoipa::path(post, path = "/api/payments/{id}/cancel", tag = "payments",
    params(("id" = Uuid, Path, description = "Payment id")),
    responses(
        (status = 200, body = PaymentDto),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No longer pending", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel_payment(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult {
    let payment = service(&state)?.cancel(caller.principal(), PaymentId(id)).await?;
    Ok(Json(PaymentDto::from(payment)).into_response())
}

/// Payments held for review (risk analysts), newest first.
#[utoipa::path(get, path = "/api/risk/reviews", tag = "risk",
    params(PageQuery),
    responses(
        (status = 200, body = PaymentPageDto),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_reviews(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult {
    let service = service(&state)?;
    let limit = limit(query.limit, service.limits().max_page)?;
    let page = service.reviews(caller.principal(), cursor(query.cursor)?, limit).await?;
    Ok(Json(PaymentPageDto::from(page)).into_response())
}

/// One payment under review (risk analysts).
#[utoipa::path(get, path = "/api/risk/reviews/{id}", tag = "risk",
    params(("id" = Uuid, Path, description = "Payment id")),
    responses(
        (status = 200, body = PaymentDto),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_review(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult {
    let payment = service(&state)?.review_item(caller.principal(), PaymentId(id)).await?;
    Ok(Json(PaymentDto::from(payment)).into_response())
}

/// Approve a held payment: it goes on to the payment worker.
#[utoipa::path(post, path = "/api/risk/reviews/{id}/approve", tag = "risk",
    params(("id" = Uuid, Path, description = "Payment id")),
    responses(
        (status = 200, body = PaymentDto),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not held for review", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn approve_review(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult {
    let payment = service(&state)?.review(caller.principal(), PaymentId(id), true).await?;
    Ok(Json(PaymentDto::from(payment)).into_response())
}

/// Reject a held payment: it ends and its hold is released.
#[utoipa::path(post, path = "/api/risk/reviews/{id}/reject", tag = "risk",
    params(("id" = Uuid, Path, description = "Payment id")),
    responses(
        (status = 200, body = PaymentDto),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not held for review", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reject_review(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult {
    let payment = service(&state)?.review(caller.principal(), PaymentId(id), false).await?;
    Ok(Json(PaymentDto::from(payment)).into_response())
}

impl From<PaymentsError> for Problem {
    fn from(error: PaymentsError) -> Self {
        match error {
            PaymentsError::Busy => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "Payments busy")
                    .detail("the payments queue is full; retry with the same Idempotency-Key")
                    .retry_after(1)
            }
            PaymentsError::ShuttingDown => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "Shutting down")
                    .retry_after(1)
            }
            PaymentsError::NotFound(what) => Problem::not_found(what),
            PaymentsError::Forbidden(why) => {
                Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(why)
            }
            PaymentsError::Payment(e) => {
                let status = match e {
                    ferrobank_domain::PaymentError::AlreadyFinal { .. }
                    | ferrobank_domain::PaymentError::NotCancellable { .. }
                    | ferrobank_domain::PaymentError::InvalidTransition { .. } => {
                        StatusCode::CONFLICT
                    }
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                Problem::new(status, e.code(), "Payment refused").detail(e.to_string())
            }
            PaymentsError::Ledger(e) => e.into(),
            PaymentsError::Store(e) => e.into(),
        }
    }
}
