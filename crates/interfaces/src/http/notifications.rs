//! Handlers of `/api/notifications` (the in-app inbox) and `/api/webhooks` (endpoints,
//! their deliveries and replays). A customer sees only its own; anything else is 404.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferrobank_application::notifications::{
    DeliveryAttempt, DeliveryPage, NewEndpoint, Notification, NotificationError,
    NotificationService, WebhookDelivery, WebhookEndpoint,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::problem::Problem;

type ApiResult = Result<Response, Problem>;

/// Query of `GET /api/notifications`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NotificationQuery {
    /// Only unread notifications.
    pub unread: Option<bool>,
    /// Cursor: the previous page's `next_cursor`.
    pub after: Option<Uuid>,
    /// Page size, 1..=100 (default 20).
    pub limit: Option<u32>,
    /// Whose inbox (`banking-admin` only; default: the caller's).
    pub owner: Option<String>,
}

/// Query of `GET /api/webhooks`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WebhookListQuery {
    /// Whose endpoints (`banking-admin` only; default: the caller's).
    pub owner: Option<String>,
}

/// Query of `GET /api/webhooks/{id}/deliveries`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// Cursor: the previous page's `next_cursor`.
    pub after: Option<Uuid>,
    /// Page size, 1..=100 (default 20).
    pub limit: Option<u32>,
}

/// An in-app notification.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationDto {
    /// Its id.
    pub id: Uuid,
    /// The event type (`transaction.completed`, ...).
    #[serde(rename = "type")]
    pub type_: String,
    /// One line for the inbox.
    pub title: String,
    /// The payment, if the event named one.
    pub payment_id: Option<String>,
    /// The payment as announced.
    pub data: Value,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: i64,
    /// When it was read, Unix milliseconds; `null` while unread.
    pub read_at_ms: Option<i64>,
}

impl From<Notification> for NotificationDto {
    fn from(n: Notification) -> Self {
        Self {
            id: n.id,
            type_: n.event_type,
            title: n.title,
            payment_id: n.payment_id,
            data: n.data,
            created_at_ms: n.created_at_ms,
            read_at_ms: n.read_at_ms,
        }
    }
}

/// A page of notifications, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPageDto {
    /// The notifications.
    pub items: Vec<NotificationDto>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_cursor: Option<Uuid>,
}

/// `POST /api/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where to POST events: `https://` (or `http://` when the server allows it), at most
    /// 2048 bytes, no credentials, no fragment.
    pub url: String,
    /// Event types to receive; absent or empty: all of them.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Free text, at most 256 characters.
    pub description: Option<String>,
    /// Whose endpoint (`banking-admin` only; default: the caller's).
    pub owner: Option<String>,
}

/// A webhook endpoint (its secret is shown only when it is created).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDto {
    /// Its id.
    pub id: Uuid,
    /// Whose events it receives.
    pub owner: String,
    /// Where events are POSTed.
    pub url: String,
    /// The event types it receives.
    pub event_types: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// False once deleted.
    pub active: bool,
    /// When it was registered, Unix milliseconds.
    pub created_at_ms: i64,
    /// When it was deleted, Unix milliseconds.
    pub disabled_at_ms: Option<i64>,
}

impl From<WebhookEndpoint> for WebhookDto {
    fn from(e: WebhookEndpoint) -> Self {
        Self {
            active: e.active(),
            id: e.id,
            owner: e.owner,
            url: e.url,
            event_types: e.event_types,
            description: e.description,
            created_at_ms: e.created_at_ms,
            disabled_at_ms: e.disabled_at_ms,
        }
    }
}

/// A webhook endpoint just created, with its signing secret: shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhookDto {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: WebhookDto,
    /// `whsec_` + base64: verify `webhook-signature` with it (Standard Webhooks). Never
    /// shown again.
    pub secret: String,
}

/// The caller's (or an owner's) endpoints, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookListDto {
    /// The endpoints, deleted ones included.
    pub items: Vec<WebhookDto>,
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryAttemptDto {
    /// The series (1, then one more per replay).
    pub series: u32,
    /// Its number in the series, from 1.
    pub attempt: u32,
    /// When it started, Unix milliseconds.
    pub at_ms: i64,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// The endpoint's HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// Why it got no answer (connection error, timeout).
    pub error: Option<String>,
    /// The first bytes of the answer.
    pub response_prefix: Option<String>,
}

impl From<DeliveryAttempt> for DeliveryAttemptDto {
    fn from(a: DeliveryAttempt) -> Self {
        Self {
            series: a.series,
            attempt: a.attempt,
            at_ms: a.at_ms,
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            error: a.error,
            response_prefix: a.response_prefix,
        }
    }
}

/// One event to one endpoint, with its latest attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDto {
    /// Its id.
    pub id: Uuid,
    /// The event type.
    pub event_type: String,
    /// The event id.
    pub event_id: String,
    /// The `webhook-id` header, the same on every attempt and replay.
    pub message_id: String,
    /// `pending`, `delivered`, `failed` or `cancelled`.
    pub status: String,
    /// The current series (1, then one more per replay).
    pub series: u32,
    /// Attempts in the current series.
    pub attempts: u32,
    /// When the next attempt is due, Unix milliseconds.
    pub next_attempt_at_ms: Option<i64>,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: i64,
    /// The last answer's HTTP status.
    pub last_status_code: Option<u16>,
    /// Why the last attempt got no answer.
    pub last_error: Option<String>,
    /// The latest attempts, oldest first.
    pub log: Vec<DeliveryAttemptDto>,
}

impl DeliveryDto {
    fn new(d: WebhookDelivery, log: Vec<DeliveryAttempt>) -> Self {
        Self {
            id: d.id,
            event_type: d.event_type,
            event_id: d.event_id,
            message_id: d.message_id,
            status: d.status.as_str().to_owned(),
            series: d.series,
            attempts: d.attempts,
            next_attempt_at_ms: d.next_attempt_at_ms,
            created_at_ms: d.created_at_ms,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            log: log.into_iter().map(Into::into).collect(),
        }
    }
}

/// A page of an endpoint's deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPageDto {
    /// The deliveries.
    pub items: Vec<DeliveryDto>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_cursor: Option<Uuid>,
}

impl From<DeliveryPage> for DeliveryPageDto {
    fn from(page: DeliveryPage) -> Self {
        Self {
            items: page
                .items
                .into_iter()
                .map(|d| DeliveryDto::new(d.delivery, d.attempts))
                .collect(),
            next_cursor: page.next_after,
        }
    }
}

impl From<NotificationError> for Problem {
    fn from(error: NotificationError) -> Self {
        use NotificationError as E;
        let unprocessable = |code: &str, title: &str, error: &E| {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, title).detail(error.to_string())
        };
        match error {
            E::NotFound => Problem::not_found("the resource"),
            E::Forbidden => Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
                .detail("the caller may only act for itself"),
            E::OwnerRequired => unprocessable("owner_required", "Owner required", &error),
            E::InvalidUrl(_) => unprocessable("invalid_webhook_url", "Invalid webhook URL", &error),
            E::PrivateUrl(_) => {
                unprocessable("webhook_url_not_allowed", "Webhook URL not allowed", &error)
            }
            E::InvalidEventTypes(_) => {
                unprocessable("invalid_event_types", "Invalid event types", &error)
            }
            E::InvalidDescription => unprocessable("invalid_body", "Invalid request body", &error),
            E::TooManyEndpoints => {
                unprocessable("too_many_webhooks", "Too many webhook endpoints", &error)
            }
            E::TooManyReplays => unprocessable("too_many_replays", "Too many replays", &error),
            E::EndpointDisabled => {
                Problem::new(StatusCode::CONFLICT, "webhook_deleted", "Webhook endpoint deleted")
                    .detail(error.to_string())
            }
            E::DeliveryInProgress => {
                Problem::new(StatusCode::CONFLICT, "delivery_in_progress", "Delivery in progress")
                    .detail("the delivery is still being attempted; replay it once it is done")
            }
            E::InvalidLimit => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_query", "Invalid query parameter")
                    .detail(error.to_string())
            }
            E::InvalidEvent(_) => {
                tracing::error!(%error, "an event reached the HTTP layer");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
            }
            E::Store(store) => store.into(),
        }
    }
}

/// The service, or 404 when this server does not run notifications.
fn service(state: &AppState) -> Result<&NotificationService, Problem> {
    state.notifications.as_ref().ok_or_else(|| {
        Problem::not_found("the resource").detail("notifications are not enabled on this server")
    })
}

/// The caller's notifications, newest first.
#[utoipa::path(get, path = "/api/notifications", tag = "notifications",
    params(NotificationQuery),
    responses(
        (status = 200, body = NotificationPageDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`owner` names someone else", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_notifications(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<NotificationQuery>,
) -> ApiResult {
    let page = service(&state)?
        .notifications(
            caller.principal(),
            query.owner.as_deref(),
            query.unread.unwrap_or(false),
            query.after,
            query.limit,
        )
        .await?;
    Ok(Json(NotificationPageDto {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_after,
    })
    .into_response())
}

/// Mark a notification read (again: no change).
#[utoipa::path(post, path = "/api/notifications/{id}/read", tag = "notifications",
    params(("id" = Uuid, Path, description = "Notification id")),
    responses(
        (status = 200, body = NotificationDto),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn mark_read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult {
    let notification = service(&state)?.mark_read(caller.principal(), id).await?;
    Ok(Json(NotificationDto::from(notification)).into_response())
}

/// Register a webhook endpoint; the answer carries its signing secret, once.
#[utoipa::path(post, path = "/api/webhooks", tag = "notifications",
    request_body = CreateWebhookRequest,
    responses(
        (status = 201, description = "Registered; `Location` names it", body = CreatedWebhookDto),
        (status = 403, description = "`owner` names someone else", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad URL (`invalid_webhook_url`), a loopback, private or link-local host (`webhook_url_not_allowed`), bad event types, or 10 endpoints already", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateWebhookRequest>,
) -> ApiResult {
    let new = NewEndpoint {
        owner: body.owner,
        url: body.url,
        event_types: body.event_types,
        description: body.description,
    };
    let (endpoint, secret) = service(&state)?.register(caller.principal(), new).await?;
    let location = format!("/api/webhooks/{}", endpoint.id);
    let created = CreatedWebhookDto { endpoint: endpoint.into(), secret };
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(created)).into_response())
}

/// The caller's webhook endpoints, newest first.
#[utoipa::path(get, path = "/api/webhooks", tag = "notifications",
    params(WebhookListQuery),
    responses(
        (status = 200, body = WebhookListDto),
        (status = 403, description = "`owner` names someone else", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<WebhookListQuery>,
) -> ApiResult {
    let endpoints = service(&state)?.endpoints(caller.principal(), query.owner.as_deref()).await?;
    Ok(Json(WebhookListDto { items: endpoints.into_iter().map(Into::into).collect() })
        .into_response())
}

/// One webhook endpoint.
#[utoipa::path(get, path = "/api/webhooks/{id}", tag = "notifications",
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 200, body = WebhookDto),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult {
    let endpoint = service(&state)?.endpoint(caller.principal(), id).await?;
    Ok(Json(WebhookDto::from(endpoint)).into_response())
}

/// Delete (disable) a webhook endpoint: it receives nothing more and its pending
/// deliveries are cancelled; it and its log stay readable.
#[utoipa::path(delete, path = "/api/webhooks/{id}", tag = "notifications",
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 204, description = "Deleted (or already deleted)"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult {
    service(&state)?.delete_endpoint(caller.principal(), id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An endpoint's deliveries, newest first, each with its latest attempts.
#[utoipa::path(get, path = "/api/webhooks/{id}/deliveries", tag = "notifications",
    params(("id" = Uuid, Path, description = "Endpoint id"), DeliveryQuery),
    responses(
        (status = 200, body = DeliveryPageDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> ApiResult {
    let page =
        service(&state)?.deliveries(caller.principal(), id, query.after, query.limit).await?;
    Ok(Json(DeliveryPageDto::from(page)).into_response())
}

/// Send a delivery again: a new series of attempts of the same message (same
/// `webhook-id` and body, a fresh timestamp and signature).
#[utoipa::path(post, path = "/api/webhooks/{id}/deliveries/{delivery_id}/replay", tag = "notifications",
    params(
        ("id" = Uuid, Path, description = "Endpoint id"),
        ("delivery_id" = Uuid, Path, description = "Delivery id"),
    ),
    responses(
        (status = 202, description = "Replay scheduled", body = DeliveryDto),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Still pending, or the endpoint was deleted", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn replay_delivery(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, delivery_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult {
    let delivery = service(&state)?.replay(caller.principal(), id, delivery_id).await?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryDto::new(delivery, Vec::new()))).into_response())
}
