//! Column lists and row decoding shared by the queries.

use ferrobank_application::StoreError;
use ferrobank_domain::{
    Account, AccountFlags, AccountId, Amount, Balances, Currency, PendingStatus, Transfer,
    TransferId, TransferKind,
};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

pub(super) const ACCOUNT_COLUMNS: &str = "id, ledger, currency, code, owner, flags, \
    debits_pending, debits_posted, credits_pending, credits_posted, created_at_ms";

pub(super) const TRANSFER_COLUMNS: &str = "seq, id, debit_account_id, credit_account_id, amount, \
    currency, code, kind, pending_id, timeout_s, linked, requested_amount, created_at_ms, \
    expires_at_ms, pending_status, dr_debits_pending, dr_debits_posted, dr_credits_pending, \
    dr_credits_posted, cr_debits_pending, cr_debits_posted, cr_credits_pending, cr_credits_posted";

/// Columns written by an insert: TRANSFER_COLUMNS without the generated `seq`, plus ledger.
pub(super) const TRANSFER_INSERT_COLUMNS: &[&str] = &[
    "id",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "ledger",
    "currency",
    "code",
    "kind",
    "pending_id",
    "timeout_s",
    "linked",
    "requested_amount",
    "created_at_ms",
    "expires_at_ms",
    "pending_status",
    "dr_debits_pending",
    "dr_debits_posted",
    "dr_credits_pending",
    "dr_credits_posted",
    "cr_debits_pending",
    "cr_debits_posted",
    "cr_credits_pending",
    "cr_credits_posted",
];

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn get<'r, T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>>(
    row: &'r AnyRow,
    column: &str,
) -> Result<T, StoreError> {
    row.try_get(column).map_err(|e| corrupt(format_args!("{column}: {e}")))
}

fn uuid(row: &AnyRow, column: &str) -> Result<Uuid, StoreError> {
    let text: String = get(row, column)?;
    Uuid::parse_str(&text).map_err(|e| corrupt(format_args!("{column}: {e}")))
}

fn u16_column(row: &AnyRow, column: &str) -> Result<u16, StoreError> {
    u16::try_from(get::<i64>(row, column)?).map_err(|e| corrupt(format_args!("{column}: {e}")))
}

fn currency(row: &AnyRow) -> Result<Currency, StoreError> {
    let code: String = get(row, "currency")?;
    Currency::parse(&code).map_err(corrupt)
}

fn balances(row: &AnyRow, prefix: &str) -> Result<Balances, StoreError> {
    Ok(Balances {
        debits_pending: get(row, &format!("{prefix}debits_pending"))?,
        debits_posted: get(row, &format!("{prefix}debits_posted"))?,
        credits_pending: get(row, &format!("{prefix}credits_pending"))?,
        credits_posted: get(row, &format!("{prefix}credits_posted"))?,
    })
}

pub(super) fn account(row: &AnyRow) -> Result<Account, StoreError> {
    Ok(Account {
        id: AccountId(uuid(row, "id")?),
        currency: currency(row)?,
        code: u16_column(row, "code")?,
        owner: get(row, "owner")?,
        flags: AccountFlags::from_bits(get(row, "flags")?),
        balances: balances(row, "")?,
        created_at_ms: get(row, "created_at_ms")?,
    })
}

/// The stored name of a transfer's kind.
pub(super) fn kind_name(kind: TransferKind) -> &'static str {
    match kind {
        TransferKind::Posted => "posted",
        TransferKind::Pending { .. } => "pending",
        TransferKind::PostPending { .. } => "post_pending",
        TransferKind::VoidPending { .. } => "void_pending",
    }
}

pub(super) fn timeout_s(kind: TransferKind) -> i64 {
    match kind {
        TransferKind::Pending { timeout_s } => i64::from(timeout_s),
        _ => 0,
    }
}

/// A transfer and its commit sequence number.
pub(super) fn transfer(row: &AnyRow) -> Result<(i64, Transfer), StoreError> {
    let kind_text: String = get(row, "kind")?;
    let pending_id = || -> Result<TransferId, StoreError> {
        let text: Option<String> = get(row, "pending_id")?;
        let text = text.ok_or_else(|| corrupt("post/void without pending_id"))?;
        Uuid::parse_str(&text).map(TransferId).map_err(corrupt)
    };
    let kind = match kind_text.as_str() {
        "posted" => TransferKind::Posted,
        "pending" => TransferKind::Pending {
            timeout_s: u32::try_from(get::<i64>(row, "timeout_s")?).map_err(corrupt)?,
        },
        "post_pending" => TransferKind::PostPending { pending_id: pending_id()? },
        "void_pending" => TransferKind::VoidPending { pending_id: pending_id()? },
        other => return Err(corrupt(format_args!("unknown transfer kind {other}"))),
    };
    let amount = |column: &str| -> Result<Option<Amount>, StoreError> {
        get::<Option<i64>>(row, column)?.map(|v| Amount::new(v).map_err(corrupt)).transpose()
    };
    let pending_status = get::<Option<String>>(row, "pending_status")?
        .map(|s| PendingStatus::parse(&s).ok_or_else(|| corrupt(format_args!("status {s}"))))
        .transpose()?;
    let transfer = Transfer {
        id: TransferId(uuid(row, "id")?),
        debit_account_id: AccountId(uuid(row, "debit_account_id")?),
        credit_account_id: AccountId(uuid(row, "credit_account_id")?),
        amount: amount("amount")?.ok_or_else(|| corrupt("amount is null"))?,
        currency: currency(row)?,
        code: u16_column(row, "code")?,
        kind,
        linked: get::<i64>(row, "linked")? != 0,
        requested_amount: amount("requested_amount")?,
        created_at_ms: get(row, "created_at_ms")?,
        expires_at_ms: get(row, "expires_at_ms")?,
        pending_status,
        debit_balances_after: balances(row, "dr_")?,
        credit_balances_after: balances(row, "cr_")?,
    };
    Ok((get(row, "seq")?, transfer))
}
