//! The HTTP API: one axum router for the ledger service plus health, metrics and docs.

pub mod audit;
mod docs;
pub mod dto;
pub mod extract;
pub mod idempotency;
pub(crate) mod idp;
mod ledger;
pub mod notifications;
mod observe;
pub mod payments;
pub mod problem;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use axum::routing::{get, post};
use ferrobank_adapters::idp::IdentityProvider;
use ferrobank_adapters::oidc::TokenValidator;
use ferrobank_application::{Clock, IdempotencyStore, LedgerService};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub use docs::ApiDoc;
pub use observe::metrics_handle;

/// Header carrying the request id, set when the client did not send one.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Bounds on what a request may ask of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may run before it is answered 408/503.
    pub request_timeout_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self { max_body_bytes: 1024 * 1024, request_timeout_ms: 30_000 }
    }
}

/// Everything a handler may need.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The ledger use cases.
    pub ledger: LedgerService,
    /// Idempotency-Key storage.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Bounds.
    pub limits: HttpLimits,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Validates bearer tokens; `None` turns authentication off (every caller anonymous).
    pub auth: Option<Arc<TokenValidator>>,
    /// The built-in identity provider, when this process runs it.
    pub idp: Option<Arc<IdentityProvider>>,
    /// The payment use cases, when this process serves them.
    pub payments: Option<ferrobank_application::payments::PaymentService>,
    /// Notifications and webhooks; `None`: their routes answer 404.
    pub notifications: Option<ferrobank_application::NotificationService>,
    /// The audit trail `GET /api/audit` reads; `None`: its routes answer 404.
    pub audit: Option<Arc<dyn ferrobank_application::AuditLog>>,
    /// The enriched activity log `GET /api/activity` reads; `None`: 404.
    pub activity: Option<Arc<dyn ferrobank_application::ActivityLog>>,
    /// Where every 401 and 403 of `/api` is recorded as `access.denied`; `None`: nowhere.
    pub audit_sink: Option<ferrobank_application::AuditSink>,
    /// Whether this process serves the ledger API (`/api/accounts`, `/api/transfers`).
    pub api: bool,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/accounts", post(ledger::open_account))
        .route("/api/accounts/{id}", get(ledger::get_account))
        .route("/api/accounts/{id}/balances", get(ledger::get_balances))
        .route("/api/accounts/{id}/history", get(ledger::get_history))
        .route("/api/transfers", post(ledger::create_transfer))
        .route("/api/transfers/batch", post(ledger::create_transfers))
        .route("/api/transfers/{id}", get(ledger::get_transfer))
        .route("/api/transfers/{id}/post", post(ledger::post_pending))
        .route("/api/transfers/{id}/void", post(ledger::void_pending))
        .route("/api/payments", post(payments::create_payment).get(payments::list_payments))
        .route("/api/payments/{id}", get(payments::get_payment))
        .route("/api/payments/{id}/cancel", post(payments::cancel_payment))
        .route("/api/risk/reviews", get(payments::list_reviews))
        .route("/api/risk/reviews/{id}", get(payments::get_review))
        .route("/api/risk/reviews/{id}/approve", post(payments::approve_review))
        .route("/api/risk/reviews/{id}/reject", post(payments::reject_review))
        .route("/api/notifications", get(notifications::list_notifications))
        .route("/api/notifications/{id}/read", post(notifications::mark_read))
        .route(
            "/api/webhooks",
            post(notifications::create_webhook).get(notifications::list_webhooks),
        )
        .route(
            "/api/webhooks/{id}",
            get(notifications::get_webhook).delete(notifications::delete_webhook),
        )
        .route("/api/webhooks/{id}/deliveries", get(notifications::list_deliveries))
        .route(
            "/api/webhooks/{id}/deliveries/{delivery_id}/replay",
            post(notifications::replay_delivery),
        )
        .route("/api/audit", get(audit::list_audit))
        .route("/api/audit/verify", get(audit::verify_audit))
        .route("/api/activity", get(audit::list_activity))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), idempotency::idempotency))
        // Outermost: nothing (not even an idempotency claim) happens for an unknown caller.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), extract::authenticate));
    let mut app = Router::new();
    if state.api {
        app = app.merge(api);
    }
    if state.idp.is_some() {
        app = app.merge(idp::routes());
    }
    app.route("/api/openapi.json", get(docs::openapi_json))
        .route("/api/docs", get(docs::docs_page))
        .route("/health", get(observe::health))
        .route("/ready", get(observe::ready))
        .route("/metrics", get(observe::metrics))
        .fallback(observe::not_found)
        .method_not_allowed_fallback(observe::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(axum::middleware::from_fn(observe::problem_request_id))
        .layer(axum::middleware::from_fn(observe::access_log_and_metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::request_timeout))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}
