//! The OpenAPI 3.1 document (generated from the handlers) and a self-contained docs page.

use axum::Json;
use axum::response::Html;
use serde_json::{Value, json};
use utoipa::OpenApi;

use super::audit;
use super::dto;
use super::idp::admin;
use super::ledger;
use super::notifications;
use super::payments;
use super::problem::{PROBLEM_JSON, Problem};

/// The API description, generated from the handler annotations.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "ferrobank", description = "Double-entry ledger API. Amounts are integers in minor units; errors are RFC 9457 problem+json.", license(name = "Apache-2.0")),
    paths(
        ledger::open_account, ledger::get_account, ledger::get_balances, ledger::get_history,
        ledger::create_transfer, ledger::create_transfers, ledger::get_transfer,
        ledger::post_pending, ledger::void_pending,
        payments::create_payment, payments::list_payments, payments::get_payment,
        payments::cancel_payment, payments::list_reviews, payments::get_review,
        payments::approve_review, payments::reject_review,
        notifications::list_notifications, notifications::mark_read,
        notifications::create_webhook, notifications::list_webhooks, notifications::get_webhook,
        notifications::delete_webhook, notifications::list_deliveries,
        notifications::replay_delivery,
        audit::list_audit, audit::verify_audit, audit::list_activity,
        admin::list_users, admin::create_user, admin::get_user, admin::update_user,
        admin::delete_user, admin::reset_password, admin::user_roles, admin::add_roles,
        admin::remove_roles, admin::list_roles, admin::rotate_keys,
    ),
    components(schemas(
        Problem, dto::OpenAccountRequest, dto::AccountDto, dto::AccountFlagsDto, dto::BalancesDto,
        dto::TransferRequest, dto::TransferFlagsDto, dto::TransferDto, dto::TransferBatchRequest,
        dto::TransferBatchResponse, dto::TransferResultDto, dto::ResolveRequest,
        dto::HistoryPageDto, dto::HistoryEntryDto, admin::UserRepresentation,
        admin::CredentialRepresentation, admin::RoleRepresentation,
        notifications::NotificationDto, notifications::NotificationPageDto,
        notifications::CreateWebhookRequest, notifications::WebhookDto,
        notifications::CreatedWebhookDto, notifications::WebhookListDto,
        notifications::DeliveryDto, notifications::DeliveryAttemptDto,
        notifications::DeliveryPageDto,
        payments::CreatePaymentRequest, payments::PaymentDto, payments::PaymentPageDto,
        audit::AuditRecordDto, audit::AuditActorDto, audit::AuditPageDto, audit::AuditVerifyDto,
        audit::ChainBreakDto, audit::ActivityDto, audit::ActivityPageDto,
    )),
    tags((name = "accounts", description = "Open accounts, read balances and history"),
         (name = "transfers", description = "Move money: posted transfers, holds, posts and voids"),
         (name = "payments", description = "Payments (Idempotency-Key required): risk-checked, held on the ledger, settled by the payment worker; events on the bus"),
         (name = "risk", description = "Payments held by the risk check, for `risk-analyst`"),
         (name = "notifications", description = "In-app notifications of payment events, and webhooks signed the Standard Webhooks way (`webhook-id`, `webhook-timestamp`, `webhook-signature`) with a delivery log, retries and replay"),
         (name = "audit", description = "The hash-chained audit trail (every platform event, every refused request as `access.denied`), its verification, and the enriched payment activity; `compliance-officer` only"),
         (name = "admin", description = "Identity provider administration (Keycloak-shaped), for `banking-admin`. The OpenID Connect endpoints themselves are described by each realm's discovery document, `/realms/{realm}/.well-known/openid-configuration`.")),
)]
pub struct ApiDoc;

/// `GET /api/openapi.json`
pub async fn openapi_json() -> Json<Value> {
    Json(document())
}

/// The OpenAPI document with what every operation shares added once: the problems any
/// request can get (503 when the database, queue or IdP is unavailable; 401 when
/// authentication is on and the bearer token is missing or refused; for a POST also 400,
/// 413, 415 and 422), the `Idempotency-Key` header of every POST and the bearer security
/// scheme (required only when the server runs with `[auth] issuer` set).
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let problem = |description: &str| {
        json!({
            "description": description,
            "content": { PROBLEM_JSON: { "schema": { "$ref": "#/components/schemas/Problem" } } }
        })
    };
    let idempotency_key = json!({
        "name": "Idempotency-Key",
        "in": "header",
        "required": false,
        "description": "Makes retries safe: the first response is replayed; the same key with \
                        another body is 422; a key still in flight is 409.",
        "schema": { "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$" }
    });
    let unauthorized = json!({
        "description": "Authentication is on and the bearer token is missing or invalid",
        "headers": { "WWW-Authenticate": {
            "description": "RFC 6750 challenge, with `error=\"invalid_token\"` for a refused token",
            "schema": { "type": "string" }
        } },
        "content": { PROBLEM_JSON: { "schema": { "$ref": "#/components/schemas/Problem" } } }
    });
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        components.insert(
            "securitySchemes".into(),
            json!({ "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "An OpenID Connect access token of the configured issuer \
                                (`[auth] issuer`); without that setting no token is needed."
            } }),
        );
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return doc;
    };
    for (method, operation) in
        paths.values_mut().filter_map(Value::as_object_mut).flat_map(|item| item.iter_mut())
    {
        let Some(operation) = operation.as_object_mut() else { continue };
        let mut shared = vec![
            ("401", unauthorized.clone()),
            ("503", problem("Temporarily unavailable; retry after `Retry-After`")),
        ];
        // Anonymous access is allowed too: authentication is opt-in per deployment.
        operation.insert("security".into(), json!([{}, { "bearerAuth": [] }]));
        let has_body = operation.contains_key("requestBody");
        if method == "post" || has_body {
            shared.extend([
                ("400", problem("Malformed JSON or an invalid Idempotency-Key")),
                ("409", problem("Idempotency-Key still in flight, or the id is taken")),
                ("413", problem("Request body too large")),
                ("415", problem("Content-Type is not application/json")),
                ("422", problem("Invalid request, or refused by a ledger rule")),
            ]);
        }
        if admin_operation(operation) {
            shared.push(("403", problem("The caller is not a banking-admin of the realm")));
        }
        if method == "post" && !admin_operation(operation) {
            let parameters = operation.entry("parameters").or_insert_with(|| json!([]));
            if let Some(parameters) = parameters.as_array_mut() {
                parameters.push(idempotency_key.clone());
            }
        }
        let responses = operation.entry("responses").or_insert_with(|| json!({}));
        if let Some(responses) = responses.as_object_mut() {
            for (status, response) in shared {
                responses.entry(status).or_insert(response);
            }
        }
    }
    doc
}

/// Whether an operation belongs to the identity provider's admin API (Keycloak's shape: no
/// `Idempotency-Key`; creating a user twice is a 409 by username).
fn admin_operation(operation: &serde_json::Map<String, Value>) -> bool {
    operation
        .get("tags")
        .and_then(Value::as_array)
        .is_some_and(|tags| tags.iter().any(|t| t == "admin"))
}

/// `GET /api/docs`: every operation with its summary, rendered without scripts or CDNs.
pub async fn docs_page() -> Html<String> {
    let doc = ApiDoc::openapi();
    let mut rows = String::new();
    for (path, item) in &doc.paths.paths {
        let operations = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (method, operation) in operations {
            if let Some(op) = operation {
                let summary =
                    op.summary.clone().or_else(|| op.description.clone()).unwrap_or_default();
                rows.push_str(&format!(
                    "<tr><td><code>{method}</code></td><td><code>{}</code></td><td>{}</td></tr>\n",
                    escape(path),
                    escape(&summary)
                ));
            }
        }
    }
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ferrobank API</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}\
         td{{padding:.3rem .6rem;border-bottom:1px solid #ddd;vertical-align:top}}</style></head><body>\
         <h1>ferrobank API</h1><p>Machine-readable: <a href=\"/api/openapi.json\">/api/openapi.json</a> \
         (OpenAPI {}). Amounts are integers in minor units. Errors are \
         <a href=\"https://www.rfc-editor.org/rfc/rfc9457\">RFC 9457</a> problem+json. Every POST accepts \
         an <code>Idempotency-Key</code> header.</p><table><thead><tr><th>Method</th><th>Path</th>\
         <th>Summary</th></tr></thead><tbody>\n{rows}</tbody></table></body></html>",
        "3.1"
    ))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
