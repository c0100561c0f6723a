//! Events as they are written to the outbox table, in the same transaction as the change.

use ferrobank_domain::{Account, LedgerEvent, Payment, PaymentEvent, Transfer, TransferKind};
use serde_json::{Value, json};
use uuid::Uuid;

/// One row of the outbox: published later by the relay, at least once.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// Unique per event; consumers de-duplicate on it. A transfer event's id is the
    /// transfer's id, since each transfer produces exactly one event; an account event
    /// gets an id of its own, since clients choose account and transfer ids alike and an
    /// account may carry a transfer's id.
    pub event_id: Uuid,
    /// `account.opened`, `transfer.created`, `transfer.posted`, `transfer.voided`.
    pub kind: &'static str,
    /// The event body (JSON).
    pub payload: Value,
    /// When the change committed, Unix milliseconds.
    pub created_at_ms: i64,
    /// What the event is about, and the key that keeps its order on the bus: the account
    /// (a transfer's debit account, a payment's debtor account).
    pub subject: String,
    /// The W3C `traceparent` of the request that caused it, when there was one.
    pub traceparent: Option<String>,
}

impl OutboxMessage {
    /// The outbox row for a domain event.
    pub fn from_event(event: &LedgerEvent) -> Self {
        let (event_id, payload, created_at_ms, subject) = match event {
            LedgerEvent::AccountOpened(account) => {
                (Uuid::now_v7(), account_json(account), account.created_at_ms, account.id)
            }
            LedgerEvent::TransferCreated(t) | LedgerEvent::TransferPosted(t) => {
                (t.id.0, transfer_json(t, false), t.created_at_ms, t.debit_account_id)
            }
            LedgerEvent::TransferVoided { transfer, expired } => (
                transfer.id.0,
                transfer_json(transfer, *expired),
                transfer.created_at_ms,
                transfer.debit_account_id,
            ),
        };
        Self {
            event_id,
            kind: event.kind(),
            payload,
            created_at_ms,
            subject: subject.to_string(),
            traceparent: None,
        }
    }

    /// The outbox row announcing `event` of `payment` (its state after the change), caused
    /// by `actor` (a token subject, or a service such as `payment-worker`).
    pub fn payment(
        payment: &Payment,
        event: PaymentEvent,
        actor: &str,
        traceparent: Option<String>,
    ) -> Self {
        let mut payload = serde_json::to_value(payment).unwrap_or(Value::Null);
        if let Value::Object(fields) = &mut payload {
            fields.insert("actor".into(), Value::String(actor.to_owned()));
        }
        Self {
            event_id: Uuid::now_v7(),
            kind: event.kind(),
            payload,
            created_at_ms: payment.updated_at_ms,
            subject: payment.debtor_account.to_string(),
            traceparent,
        }
    }
}

fn account_json(a: &Account) -> Value {
    json!({
        "account_id": a.id,
        "currency": a.currency,
        "ledger": a.currency.ledger(),
        "code": a.code,
        "owner": a.owner,
        "flags": a.flags,
    })
}

fn transfer_json(t: &Transfer, expired: bool) -> Value {
    json!({
        "transfer_id": t.id,
        "debit_account_id": t.debit_account_id,
        "credit_account_id": t.credit_account_id,
        "amount": t.amount,
        "currency": t.currency,
        "ledger": t.currency.ledger(),
        "code": t.code,
        "pending_id": t.kind.pending_id(),
        "pending": matches!(t.kind, TransferKind::Pending { .. }),
        "expired": expired,
    })
}
