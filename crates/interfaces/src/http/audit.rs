//! Handlers of `/api/audit` (the hash-chained audit trail, its verification) and
//! `/api/activity` (the enriched payment activity), for `compliance-officer` only: any other
//! role is 403 (and that refusal is itself an `access.denied` record).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferrobank_application::audit::may_read_audit;
use ferrobank_application::audit_consumer::unix_ms_from_rfc3339;
use ferrobank_application::bus::rfc3339_from_unix_ms;
use ferrobank_application::{
    ActivityCursor, ActivityEntry, ActivityQuery, AuditQuery, MAX_ACTIVITY_PAGE, MAX_AUDIT_PAGE,
    verify_log,
};
use ferrobank_domain::audit::{AuditAction, AuditActor, AuditRecord, ChainBreak, hash_hex};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::extract::{ApiQuery, Caller};
use super::problem::Problem;

type ApiResult = Result<Response, Problem>;

/// Page size when `limit` is not given.
const DEFAULT_PAGE: u32 = 100;

/// Query of `GET /api/audit`. Every filter given must match.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditListQuery {
    /// Who: `subject:<sub>`, `service:<name>`, `anonymous`, or a bare token subject.
    pub actor: Option<String>,
    /// What: an action such as `transaction.completed` or `access.denied`.
    pub action: Option<String>,
    /// On what, exactly: `payment:<id>`, `transfer:<id>`, `account:<id>`, `GET /api/audit`.
    pub resource: Option<String>,
    /// Records at or after this instant, RFC 3339 (`2025-01-31T12:00:00Z`).
    pub from: Option<String>,
    /// Records before this instant, RFC 3339.
    pub until: Option<String>,
    /// Cursor: the previous page's `next_after` (a `seq`).
    pub after: Option<u64>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<u32>,
}

/// Query of `GET /api/activity`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ActivityListQuery {
    /// Only this payment's activity.
    pub payment_id: Option<String>,
    /// Cursor: the previous page's `next_after`.
    pub after: Option<String>,
    /// Page size, 1 to 500 (default 100).
    pub limit: Option<u32>,
}

/// Who did it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditActorDto {
    /// `subject` (a token's `sub`), `service` or `anonymous`.
    pub kind: String,
    /// The subject or service id (`anonymous` for anonymous).
    pub id: String,
}

/// One link of the audit chain, as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditRecordDto {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// The record id (for events: the event id).
    pub id: Uuid,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// Who.
    pub actor: AuditActorDto,
    /// What (`transaction.completed`, `access.denied`, ...).
    pub action: String,
    /// On what.
    pub resource: String,
    /// `success`, `denied` or `failed`.
    pub outcome: String,
    /// Context: amount, currency, status, event id, traceparent; for denials the status,
    /// reason, request id and layer.
    pub details: Value,
    /// SHA-256 of the record before, hex.
    pub prev_hash: String,
    /// SHA-256 of this record, hex.
    pub hash: String,
}

impl From<AuditRecord> for AuditRecordDto {
    fn from(record: AuditRecord) -> Self {
        Self {
            seq: record.seq,
            id: record.id,
            at: rfc3339_from_unix_ms(record.at_ms),
            at_ms: record.at_ms,
            actor: AuditActorDto {
                kind: record.actor.kind().to_owned(),
                id: record.actor.id().to_owned(),
            },
            action: record.action.as_str().to_owned(),
            resource: record.resource,
            outcome: record.outcome.as_str().to_owned(),
            details: record.details,
            prev_hash: hash_hex(&record.prev_hash),
            hash: hash_hex(&record.hash),
        }
    }
}

/// A page of audit records, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPageDto {
    /// The records.
    pub records: Vec<AuditRecordDto>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_after: Option<u64>,
}

/// Where the chain breaks.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChainBreakDto {
    /// `altered`, `rewritten`, `removed` or `reordered`.
    pub kind: String,
    /// The seq of the record named.
    pub seq: u64,
    /// Its id (for `removed`: the id of the record found in its place).
    pub id: Uuid,
    /// The break in words.
    pub message: String,
}

/// The result of verifying the whole chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerifyDto {
    /// Whether every link verified.
    pub ok: bool,
    /// Records verified (when broken: the records before the break).
    pub records: u64,
    /// The first break, when there is one.
    #[serde(rename = "break", skip_serializing_if = "Option::is_none")]
    pub break_: Option<ChainBreakDto>,
}

/// One enriched payment event.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityDto {
    /// The event id.
    pub id: Uuid,
    /// The payment.
    pub payment_id: String,
    /// When the event happened, RFC 3339 UTC.
    pub at: String,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// The event type.
    pub action: String,
    /// One line for humans.
    pub summary: String,
    /// The enriched payment: owner, formatted amount, beneficiary, status entry, trace id.
    pub document: Value,
}

impl From<ActivityEntry> for ActivityDto {
    fn from(entry: ActivityEntry) -> Self {
        Self {
            id: entry.id,
            payment_id: entry.payment_id,
            at: rfc3339_from_unix_ms(entry.at_ms),
            at_ms: entry.at_ms,
            action: entry.action,
            summary: entry.summary,
            document: entry.document,
        }
    }
}

/// A page of activity, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityPageDto {
    /// The entries.
    pub entries: Vec<ActivityDto>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_after: Option<String>,
}

fn forbidden() -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
        .detail("the audit trail is for the compliance-officer role")
}

fn not_enabled() -> Problem {
    Problem::not_found("the resource").detail("the audit trail is not enabled on this server")
}

fn invalid_query(detail: String) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_query", "Invalid query parameter").detail(detail)
}

fn invalid_filter(detail: String) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_filter", "Invalid filter")
        .detail(detail)
}

fn authorize(caller: &Caller) -> Result<(), Problem> {
    if may_read_audit(caller.principal()) { Ok(()) } else { Err(forbidden()) }
}

fn page_limit(limit: Option<u32>, max: u32) -> Result<u32, Problem> {
    match limit {
        None => Ok(DEFAULT_PAGE.min(max)),
        Some(limit) if (1..=max).contains(&limit) => Ok(limit),
        Some(limit) => Err(invalid_filter(format!("limit {limit} is not within 1..={max}"))),
    }
}

fn instant(name: &str, value: Option<&str>) -> Result<Option<i64>, Problem> {
    value
        .map(|text| {
            unix_ms_from_rfc3339(text).ok_or_else(|| {
                invalid_query(format!(
                    "{name} {text:?} is not an RFC 3339 date-time (2025-01-31T12:00:00Z)"
                ))
            })
        })
        .transpose()
}

fn actor(value: &str) -> Result<AuditActor, Problem> {
    let bad = |e: ferrobank_domain::audit::AuditError| invalid_query(format!("actor: {e}"));
    match value.split_once(':') {
        _ if value == "anonymous" => Ok(AuditActor::Anonymous),
        Some(("subject", id)) => AuditActor::subject(id).map_err(bad),
        Some(("service", id)) => AuditActor::service(id).map_err(bad),
        _ => AuditActor::subject(value).map_err(bad),
    }
}

/// The audit trail, filtered, one page at a time in chain order.
#[utoipa::path(get, path = "/api/audit", tag = "audit",
    params(AuditListQuery),
    responses(
        (status = 200, body = AuditPageDto),
        (status = 400, description = "A filter does not parse", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a compliance-officer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The audit trail is not enabled on this server", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`limit` out of bounds or `from` not before `until`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AuditListQuery>,
) -> ApiResult {
    authorize(&caller)?;
    let log = state.audit.as_ref().ok_or_else(not_enabled)?;
    let from_ms = instant("from", query.from.as_deref())?;
    let until_ms = instant("until", query.until.as_deref())?;
    if let (Some(from), Some(until)) = (from_ms, until_ms)
        && from >= until
    {
        return Err(invalid_filter("from must be before until".into()));
    }
    let action = query
        .action
        .as_deref()
        .map(AuditAction::parse)
        .transpose()
        .map_err(|e| invalid_query(format!("action: {e}")))?;
    let audit_query = AuditQuery {
        actor: query.actor.as_deref().map(actor).transpose()?,
        action,
        resource: query.resource,
        from_ms,
        until_ms,
        after_seq: query.after,
        limit: page_limit(query.limit, MAX_AUDIT_PAGE)?,
    };
    let page = log.query(&audit_query).await?;
    Ok(Json(AuditPageDto {
        records: page.records.into_iter().map(Into::into).collect(),
        next_after: page.next_after,
    })
    .into_response())
}

/// Verifies the whole chain, page by page: every record's hash and every link.
#[utoipa::path(get, path = "/api/audit/verify", tag = "audit",
    responses(
        (status = 200, description = "`ok` false names the first altered, rewritten, removed or reordered record", body = AuditVerifyDto),
        (status = 403, description = "Not a compliance-officer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The audit trail is not enabled on this server", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn verify_audit(State(state): State<AppState>, caller: Caller) -> ApiResult {
    authorize(&caller)?;
    let log = state.audit.as_ref().ok_or_else(not_enabled)?;
    let body = match verify_log(&**log).await? {
        Ok(records) => AuditVerifyDto { ok: true, records, break_: None },
        Err(chain_break) => {
            let (kind, seq, id) = match &chain_break {
                ChainBreak::Altered { seq, id } => ("altered", *seq, *id),
                ChainBreak::Rewritten { seq, id } => ("rewritten", *seq, *id),
                ChainBreak::Removed { seq, next_id, .. } => ("removed", *seq, *next_id),
                ChainBreak::Reordered { seq, id, .. } => ("reordered", *seq, *id),
            };
            AuditVerifyDto {
                ok: false,
                records: seq.saturating_sub(1),
                break_: Some(ChainBreakDto {
                    kind: kind.into(),
                    seq,
                    id,
                    message: chain_break.to_string(),
                }),
            }
        }
    };
    Ok(Json(body).into_response())
}

/// The enriched payment activity, oldest first.
#[utoipa::path(get, path = "/api/activity", tag = "audit",
    params(ActivityListQuery),
    responses(
        (status = 200, body = ActivityPageDto),
        (status = 400, description = "A bad cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a compliance-officer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The activity log is not enabled on this server", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`limit` out of bounds", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_activity(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ActivityListQuery>,
) -> ApiResult {
    authorize(&caller)?;
    let log = state.activity.as_ref().ok_or_else(not_enabled)?;
    let after = query
        .after
        .as_deref()
        .map(|text| {
            ActivityCursor::decode(text)
                .ok_or_else(|| invalid_query(format!("after {text:?} is not a cursor")))
        })
        .transpose()?;
    let activity_query = ActivityQuery {
        payment_id: query.payment_id,
        after,
        limit: page_limit(query.limit, MAX_ACTIVITY_PAGE)?,
    };
    let page = log.query(&activity_query).await?;
    Ok(Json(ActivityPageDto {
        entries: page.entries.into_iter().map(Into::into).collect(),
        next_after: page.next_after.map(|cursor| cursor.encode()),
    })
    .into_response())
}
