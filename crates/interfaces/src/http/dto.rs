//! Request and response bodies of the ledger API. Amounts are integers in minor units.

use ferrobank_domain::{
    Account, AccountFlags, AccountId, Amount, Balances, Currency, NewAccount, NewTransfer,
    PendingStatus, Transfer, TransferError, TransferId, TransferKind,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Longest owner reference accepted.
const MAX_OWNER_LEN: usize = 128;

/// Body of `POST /api/accounts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAccountRequest {
    /// Account id; generated when omitted (derived from the Idempotency-Key when present).
    pub id: Option<Uuid>,
    /// ISO 4217 currency code, e.g. `EUR`; fixes the account's ledger.
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// Account type in the bank's chart of accounts.
    #[serde(default = "default_code")]
    #[schema(default = 1)]
    pub code: u16,
    /// Owner reference (customer id, or `bank` for the bank's own accounts): 1 to 128
    /// printable characters.
    #[schema(
        example = "customer-42",
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1F\\x7F]*[^\\s\\x00-\\x1F\\x7F][^\\x00-\\x1F\\x7F]*$"
    )]
    pub owner: String,
    /// Balance limits.
    #[serde(default)]
    pub flags: AccountFlagsDto,
}

fn default_code() -> u16 {
    1
}

/// Account flags.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccountFlagsDto {
    /// Never overdrawn: debits (pending + posted) may not exceed posted credits.
    pub debits_must_not_exceed_credits: bool,
    /// Credits (pending + posted) may not exceed posted debits.
    pub credits_must_not_exceed_debits: bool,
    /// Closed accounts take no transfers.
    pub closed: bool,
}

impl From<AccountFlagsDto> for AccountFlags {
    fn from(f: AccountFlagsDto) -> Self {
        Self {
            debits_must_not_exceed_credits: f.debits_must_not_exceed_credits,
            credits_must_not_exceed_debits: f.credits_must_not_exceed_debits,
            closed: f.closed,
        }
    }
}

impl From<AccountFlags> for AccountFlagsDto {
    fn from(f: AccountFlags) -> Self {
        Self {
            debits_must_not_exceed_credits: f.debits_must_not_exceed_credits,
            credits_must_not_exceed_debits: f.credits_must_not_exceed_debits,
            closed: f.closed,
        }
    }
}

impl OpenAccountRequest {
    /// Parses the request; `fallback_id` is used when the client gave no id.
    pub fn parse(self, fallback_id: Uuid) -> Result<NewAccount, String> {
        let currency = Currency::parse(&self.currency).map_err(|e| e.to_string())?;
        let owner = self.owner.trim();
        if owner.is_empty() || owner.len() > MAX_OWNER_LEN || owner.chars().any(char::is_control) {
            return Err(format!("owner must be 1 to {MAX_OWNER_LEN} printable characters"));
        }
        Ok(NewAccount {
            id: AccountId(self.id.unwrap_or(fallback_id)),
            currency,
            code: self.code,
            owner: owner.to_owned(),
            flags: self.flags.into(),
        })
    }
}

/// Balances in minor units.
#[derive(Debug, Serialize, ToSchema)]
pub struct BalancesDto {
    /// Sum of held (pending) debits.
    pub debits_pending: i64,
    /// Sum of posted debits.
    pub debits_posted: i64,
    /// Sum of pending credits.
    pub credits_pending: i64,
    /// Sum of posted credits.
    pub credits_posted: i64,
    /// Posted credits minus posted debits.
    #[schema(value_type = i64)]
    pub posted: i128,
    /// Pending credits minus pending debits.
    #[schema(value_type = i64)]
    pub pending: i128,
    /// Posted balance minus pending debits: what can be spent now.
    #[schema(value_type = i64)]
    pub available: i128,
}

impl From<Balances> for BalancesDto {
    fn from(b: Balances) -> Self {
        Self {
            debits_pending: b.debits_pending,
            debits_posted: b.debits_posted,
            credits_pending: b.credits_pending,
            credits_posted: b.credits_posted,
            posted: b.posted(),
            pending: b.pending(),
            available: b.available(),
        }
    }
}

/// An account.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountDto {
    /// Account id.
    pub id: Uuid,
    /// ISO 4217 code.
    pub currency: String,
    /// Ledger number: the ISO 4217 numeric code.
    pub ledger: u16,
    /// Minor-unit exponent of the currency (2 for EUR: amounts are cents).
    pub currency_exponent: u16,
    /// Account type.
    pub code: u16,
    /// Owner reference.
    pub owner: String,
    /// Limits and state.
    pub flags: AccountFlagsDto,
    /// Balances in minor units.
    pub balances: BalancesDto,
    /// Opening time, Unix milliseconds.
    pub created_at_ms: i64,
}

impl From<Account> for AccountDto {
    fn from(a: Account) -> Self {
        Self {
            id: a.id.0,
            currency: a.currency.code().to_owned(),
            ledger: a.currency.ledger(),
            currency_exponent: a.currency.exponent(),
            code: a.code,
            owner: a.owner,
            flags: a.flags.into(),
            balances: a.balances.into(),
            created_at_ms: a.created_at_ms,
        }
    }
}

/// Transfer flags (TigerBeetle's names). At most one of `pending`, `post_pending`,
/// `void_pending`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TransferFlagsDto {
    /// Links this transfer to the next in the request: all commit or none.
    pub linked: bool,
    /// A hold: reserves funds until posted, voided or timed out.
    pub pending: bool,
    /// Posts the hold named by `pending_id`.
    pub post_pending: bool,
    /// Voids the hold named by `pending_id`.
    pub void_pending: bool,
}

/// One transfer request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// Client-chosen id; retrying with the same id and fields returns the original.
    pub id: Uuid,
    /// Account debited (required unless posting or voiding).
    pub debit_account_id: Option<Uuid>,
    /// Account credited (required unless posting or voiding).
    pub credit_account_id: Option<Uuid>,
    /// Positive integer number of minor units. Floats are refused.
    #[schema(value_type = Option<i64>, minimum = 1, example = 2500)]
    pub amount: Option<Amount>,
    /// ISO 4217 code both accounts must hold (required unless posting or voiding).
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    /// Transfer type as the bank numbers it.
    #[serde(default = "default_code")]
    #[schema(default = 1)]
    pub code: u16,
    /// Flags.
    #[serde(default)]
    pub flags: TransferFlagsDto,
    /// The hold to post or void.
    pub pending_id: Option<Uuid>,
    /// For a hold: seconds until it voids itself; 0 or absent = never.
    pub timeout_seconds: Option<u32>,
}

impl TransferRequest {
    /// Parses into a domain request; a structural error is reported as 422.
    pub fn parse(self) -> Result<NewTransfer, String> {
        let f = self.flags;
        let kinds = [f.pending, f.post_pending, f.void_pending].iter().filter(|b| **b).count();
        if kinds > 1 {
            return Err("at most one of pending, post_pending, void_pending may be set".into());
        }
        let pending_id = self.pending_id.map(TransferId);
        let kind = match (f.pending, f.post_pending, f.void_pending, pending_id) {
            (false, false, false, None) => TransferKind::Posted,
            (true, _, _, None) => {
                TransferKind::Pending { timeout_s: self.timeout_seconds.unwrap_or(0) }
            }
            (_, true, _, Some(pending_id)) => TransferKind::PostPending { pending_id },
            (_, _, true, Some(pending_id)) => TransferKind::VoidPending { pending_id },
            (_, true, _, None) | (_, _, true, None) => {
                return Err("post_pending and void_pending need pending_id".into());
            }
            _ => return Err("pending_id is only allowed with post_pending or void_pending".into()),
        };
        if self.timeout_seconds.is_some() && !f.pending {
            return Err("timeout_seconds is only allowed with the pending flag".into());
        }
        let currency =
            self.currency.as_deref().map(Currency::parse).transpose().map_err(|e| e.to_string())?;
        Ok(NewTransfer {
            id: TransferId(self.id),
            debit_account_id: self.debit_account_id.map(AccountId),
            credit_account_id: self.credit_account_id.map(AccountId),
            amount: self.amount,
            currency,
            code: self.code,
            kind,
            linked: f.linked,
        })
    }
}

/// Body of `POST /api/transfers/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBatchRequest {
    /// Transfers in order; `linked` chains neighbours.
    pub transfers: Vec<TransferRequest>,
}

/// Body of `POST /api/transfers/{id}/post` and `/void`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// Id of the new post or void transfer (client-chosen, for idempotency).
    pub id: Uuid,
    /// For a post: the amount to post (default: all of the hold). For a void: omit.
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub amount: Option<Amount>,
}

/// A committed transfer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferDto {
    /// Transfer id.
    pub id: Uuid,
    /// Account debited.
    pub debit_account_id: Uuid,
    /// Account credited.
    pub credit_account_id: Uuid,
    /// Amount in minor units.
    #[schema(value_type = i64)]
    pub amount: Amount,
    /// ISO 4217 code.
    pub currency: String,
    /// Ledger number.
    pub ledger: u16,
    /// Transfer type.
    pub code: u16,
    /// Flags as sent.
    pub flags: TransferFlagsDto,
    /// The hold this transfer posted or voided.
    pub pending_id: Option<Uuid>,
    /// For a hold: its timeout in seconds (0 = none).
    pub timeout_seconds: Option<u32>,
    /// For a hold: when it expires, Unix milliseconds.
    pub expires_at_ms: Option<i64>,
    /// For a hold: `pending`, `posted`, `voided` or `expired`.
    #[schema(value_type = Option<String>)]
    pub pending_status: Option<PendingStatus>,
    /// Commit time, Unix milliseconds.
    pub created_at_ms: i64,
}

impl From<&Transfer> for TransferDto {
    fn from(t: &Transfer) -> Self {
        let timeout_seconds = match t.kind {
            TransferKind::Pending { timeout_s } => Some(timeout_s),
            _ => None,
        };
        Self {
            id: t.id.0,
            debit_account_id: t.debit_account_id.0,
            credit_account_id: t.credit_account_id.0,
            amount: t.amount,
            currency: t.currency.code().to_owned(),
            ledger: t.currency.ledger(),
            code: t.code,
            flags: TransferFlagsDto {
                linked: t.linked,
                pending: matches!(t.kind, TransferKind::Pending { .. }),
                post_pending: matches!(t.kind, TransferKind::PostPending { .. }),
                void_pending: matches!(t.kind, TransferKind::VoidPending { .. }),
            },
            pending_id: t.kind.pending_id().map(|id| id.0),
            timeout_seconds,
            expires_at_ms: t.expires_at_ms,
            pending_status: t.pending_status,
            created_at_ms: t.created_at_ms,
        }
    }
}

/// One result of a batch: the transfer, or the problem that refused it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferResultDto {
    /// Position in the request.
    pub index: usize,
    /// `created`, `exists` or `failed`.
    pub status: &'static str,
    /// The transfer, unless it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferDto>,
    /// The problem, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<super::problem::Problem>,
}

impl TransferResultDto {
    /// A refused transfer.
    pub fn failed(index: usize, error: TransferError) -> Self {
        Self { index, status: "failed", transfer: None, error: Some(error.into()) }
    }
}

/// Body of the batch response.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferBatchResponse {
    /// One result per request transfer, in order.
    pub results: Vec<TransferResultDto>,
}

/// One history entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntryDto {
    /// The transfer.
    pub transfer: TransferDto,
    /// The account's balances right after it.
    pub balances_after: BalancesDto,
}

/// A page of history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPageDto {
    /// Entries, newest first.
    pub entries: Vec<HistoryEntryDto>,
    /// Pass as `cursor` to fetch the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of the history endpoint.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Page size, 1..=500 (default 50).
    pub limit: Option<u32>,
    /// Cursor from the previous page's `next_cursor`.
    pub cursor: Option<String>,
}
