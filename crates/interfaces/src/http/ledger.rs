//! Handlers of `/api/accounts` and `/api/transfers`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrobank_application::OpenOutcome;
use ferrobank_domain::{
    AccountId, NewTransfer, TransferError, TransferId, TransferKind, TransferOutcome,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::AppState;
use super::dto::{
    AccountDto, BalancesDto, HistoryEntryDto, HistoryPageDto, HistoryQuery, OpenAccountRequest,
    ResolveRequest, TransferBatchRequest, TransferBatchResponse, TransferDto, TransferRequest,
    TransferResultDto,
};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::idempotency::IDEMPOTENCY_KEY;
use super::problem::Problem;

type ApiResult = Result<Response, Problem>;

/// Default and largest history page.
const DEFAULT_HISTORY_LIMIT: u32 = 50;
const MAX_HISTORY_LIMIT: u32 = 500;

/// Open an account. Opening the same account again (same id and fields) returns it.
#[utoipa::path(post, path = "/api/accounts", tag = "accounts",
    request_body = OpenAccountRequest,
    responses(
        (status = 201, description = "Opened", body = AccountDto),
        (status = 200, description = "Already open with the same fields", body = AccountDto),
        (status = 403, description = "A customer may only open accounts it owns", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Id used with other fields", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn open_account(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<OpenAccountRequest>,
) -> ApiResult {
    // Without a client id, derive one from the idempotency key, so that a retry after a
    // crash between commit and response opens nothing new.
    let fallback_id = match headers.get(IDEMPOTENCY_KEY).and_then(|v| v.to_str().ok()) {
        Some(key) => derived_id(&caller.idempotency_scope(), key),
        None => Uuid::now_v7(),
    };
    let new = body.parse(fallback_id).map_err(Problem::invalid_body)?;
    Ok(match state.ledger.open_account_as(caller.principal(), new).await? {
        OpenOutcome::Created(a) => (StatusCode::CREATED, Json(AccountDto::from(a))).into_response(),
        OpenOutcome::Exists(a) => (StatusCode::OK, Json(AccountDto::from(a))).into_response(),
    })
}

pub(super) fn derived_id(scope: &str, key: &str) -> Uuid {
    let digest = Sha256::new().chain_update(scope).chain_update([0]).chain_update(key).finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// An account with its balances.
#[utoipa::path(get, path = "/api/accounts/{id}", tag = "accounts",
    params(("id" = Uuid, Path, description = "Account id")),
    responses(
        (status = 200, body = AccountDto),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_account(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult {
    let account = state
        .ledger
        .account_as(caller.principal(), AccountId(id))
        .await?
        .ok_or_else(|| Problem::not_found("the account"))?;
    Ok(Json(AccountDto::from(account)).into_response())
}

/// Posted, pending and available balance of an account.
#[utoipa::path(get, path = "/api/accounts/{id}/balances", tag = "accounts",
    params(("id" = Uuid, Path, description = "Account id")),
    responses(
        (status = 200, body = BalancesDto),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_balances(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult {
    let account = state
        .ledger
        .account_as(caller.principal(), AccountId(id))
        .await?
        .ok_or_else(|| Problem::not_found("the account"))?;
    Ok(Json(BalancesDto::from(account.balances)).into_response())
}

/// An account's transfers, newest first, each with the balances right after it.
#[utoipa::path(get, path = "/api/accounts/{id}/history", tag = "accounts",
    params(("id" = Uuid, Path, description = "Account id"), HistoryQuery),
    responses(
        (status = 200, body = HistoryPageDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_history(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult {
    let limit = query.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(invalid_query(format!("limit must be 1 to {MAX_HISTORY_LIMIT}")));
    }
    let before = query
        .cursor
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| invalid_query("cursor is not one this API issued"))
        })
        .transpose()?;
    let account = AccountId(id);
    state
        .ledger
        .account_as(caller.principal(), account)
        .await?
        .ok_or_else(|| Problem::not_found("the account"))?;
    let page = state.ledger.history(account, before, limit).await?;
    Ok(Json(HistoryPageDto {
        entries: page
            .entries
            .iter()
            .map(|e| HistoryEntryDto {
                transfer: (&e.transfer).into(),
                balances_after: e.balances_after.into(),
            })
            .collect(),
        next_cursor: page.next_before.map(|seq| seq.to_string()),
    })
    .into_response())
}

pub(super) fn invalid_query(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_query", "Invalid query parameter").detail(detail)
}

/// Create one transfer: posted at once, or a hold (`flags.pending`), or post/void a hold.
#[utoipa::path(post, path = "/api/transfers", tag = "transfers",
    request_body = TransferRequest,
    responses(
        (status = 201, description = "Committed", body = TransferDto),
        (status = 200, description = "Identical transfer already committed", body = TransferDto),
        (status = 404, description = "Authenticated caller: the debit account or hold does not exist or is not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Id used with other fields, or hold already resolved", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Refused (insufficient funds, wrong currency, ...)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Queue full; retry after `Retry-After`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_transfer(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<TransferRequest>,
) -> ApiResult {
    let request = body.parse().map_err(Problem::invalid_body)?;
    if request.linked {
        return Err(TransferError::LinkedEventChainOpen.into());
    }
    single_transfer(&state, &caller, request, false).await
}

async fn single_transfer(
    state: &AppState,
    caller: &Caller,
    request: NewTransfer,
    resolving: bool,
) -> ApiResult {
    let mut results = state.ledger.create_transfers_as(caller.principal(), vec![request]).await?;
    match results.pop() {
        Some(Ok(TransferOutcome::Created(t))) => {
            Ok((StatusCode::CREATED, Json(TransferDto::from(&t))).into_response())
        }
        Some(Ok(TransferOutcome::Exists(t))) => {
            Ok((StatusCode::OK, Json(TransferDto::from(&t))).into_response())
        }
        Some(Err(TransferError::PendingTransferNotFound)) if resolving => {
            Err(Problem::not_found("the pending transfer"))
        }
        // An authenticated caller cannot tell an account it may not debit from a missing
        // one: both are 404 (without authentication a missing account stays a 422 refusal).
        Some(Err(TransferError::DebitAccountNotFound)) if caller.principal().is_some() => {
            Err(Problem::not_found("the debit account"))
        }
        Some(Err(error)) => Err(error.into()),
        None => Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")),
    }
}

/// Create many transfers in one request; each gets its own result, linked chains commit
/// all or nothing.
#[utoipa::path(post, path = "/api/transfers/batch", tag = "transfers",
    request_body = TransferBatchRequest,
    responses(
        (status = 200, description = "One result per transfer", body = TransferBatchResponse),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_transfers(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<TransferBatchRequest>,
) -> ApiResult {
    let max = state.ledger.limits().max_request_transfers;
    if body.transfers.is_empty() || body.transfers.len() > max {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_transfers",
            "Batch size out of range",
        )
        .detail(format!("a batch carries 1 to {max} transfers")));
    }
    let requests = body
        .transfers
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.parse().map_err(|e| Problem::invalid_body(format!("transfers[{i}]: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let results = state.ledger.create_transfers_as(caller.principal(), requests).await?;
    let results = results
        .into_iter()
        .enumerate()
        .map(|(index, result)| match result {
            Ok(TransferOutcome::Created(t)) => TransferResultDto {
                index,
                status: "created",
                transfer: Some((&t).into()),
                error: None,
            },
            Ok(TransferOutcome::Exists(t)) => TransferResultDto {
                index,
                status: "exists",
                transfer: Some((&t).into()),
                error: None,
            },
            Err(error) => TransferResultDto::failed(index, error),
        })
        .collect();
    Ok(Json(TransferBatchResponse { results }).into_response())
}

/// One transfer.
#[utoipa::path(get, path = "/api/transfers/{id}", tag = "transfers",
    params(("id" = Uuid, Path, description = "Transfer id")),
    responses(
        (status = 200, body = TransferDto),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_transfer(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult {
    let transfer = state
        .ledger
        .transfer_as(caller.principal(), TransferId(id))
        .await?
        .ok_or_else(|| Problem::not_found("the transfer"))?;
    Ok(Json(TransferDto::from(&transfer)).into_response())
}

/// Post a hold, in full or in part.
#[utoipa::path(post, path = "/api/transfers/{id}/post", tag = "transfers",
    params(("id" = Uuid, Path, description = "Id of the pending transfer")),
    request_body = ResolveRequest,
    responses(
        (status = 201, body = TransferDto),
        (status = 200, description = "Already posted by this same request", body = TransferDto),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already posted, voided or expired", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_pending(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ResolveRequest>,
) -> ApiResult {
    let kind = TransferKind::PostPending { pending_id: TransferId(id) };
    resolve(&state, &caller, kind, body).await
}

/// Void a hold, releasing the funds.
#[utoipa::path(post, path = "/api/transfers/{id}/void", tag = "transfers",
    params(("id" = Uuid, Path, description = "Id of the pending transfer")),
    request_body = ResolveRequest,
    responses(
        (status = 201, body = TransferDto),
        (status = 200, description = "Already voided by this same request", body = TransferDto),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already posted, voided or expired", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn void_pending(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ResolveRequest>,
) -> ApiResult {
    let kind = TransferKind::VoidPending { pending_id: TransferId(id) };
    resolve(&state, &caller, kind, body).await
}

async fn resolve(
    state: &AppState,
    caller: &Caller,
    kind: TransferKind,
    body: ResolveRequest,
) -> ApiResult {
    let pending = kind.pending_id().map(|id| id.0);
    let code = match pending {
        Some(id) => state
            .ledger
            .transfer_as(caller.principal(), TransferId(id))
            .await?
            .map(|t| t.code)
            .unwrap_or(1),
        None => 1,
    };
    let request = NewTransfer {
        id: TransferId(body.id),
        debit_account_id: None,
        credit_account_id: None,
        amount: body.amount,
        currency: None,
        code,
        kind,
        linked: false,
    };
    single_transfer(state, caller, request, true).await
}
