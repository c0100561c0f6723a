//! The OpenAPI 3.1 document (generated from the handlers) and a self-contained docs page.

use axum::Json;
use axum::response::Html;
use utoipa::OpenApi;

use super::dto;
use super::ledger;
use super::problem::Problem;

/// The API description, generated from the handler annotations.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "ferrobank", description = "Double-entry ledger API. Amounts are integers in minor units; errors are RFC 9457 problem+json.", license(name = "Apache-2.0")),
    paths(
        ledger::open_account, ledger::get_account, ledger::get_balances, ledger::get_history,
        ledger::create_transfer, ledger::create_transfers, ledger::get_transfer,
        ledger::post_pending, ledger::void_pending,
    ),
    components(schemas(
        Problem, dto::OpenAccountRequest, dto::AccountDto, dto::AccountFlagsDto, dto::BalancesDto,
        dto::TransferRequest, dto::TransferFlagsDto, dto::TransferDto, dto::TransferBatchRequest,
        dto::TransferBatchResponse, dto::TransferResultDto, dto::ResolveRequest,
        dto::HistoryPageDto, dto::HistoryEntryDto,
    )),
    tags((name = "accounts", description = "Open accounts, read balances and history"),
         (name = "transfers", description = "Move money: posted transfers, holds, posts and voids")),
)]
pub struct ApiDoc;

/// `GET /api/openapi.json`
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
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
