//! A payment as the bank keeps it: what the customer asked, the risk decision, the hold on
//! the ledger and where the payment is in its life.

use serde::Serialize;

use super::{Beneficiary, NewPayment, PaymentError, PaymentEvent, PaymentId, PaymentStatus};
use super::{PaymentTrigger, Reference};
use crate::ledger::{AccountId, TransferId};
use crate::money::{Amount, Currency};
use crate::risk::RiskDecision;

/// A stored payment. Its status only changes through [`Payment::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Payment {
    /// The payment's id.
    #[serde(rename = "payment_id")]
    pub id: PaymentId,
    /// The token subject of the debtor account's owner: who is notified.
    pub owner: String,
    /// The account debited.
    pub debtor_account: AccountId,
    /// Who receives the money.
    pub beneficiary: Beneficiary,
    /// Minor units of `currency`.
    pub amount: Amount,
    /// The currency of the amount and of the debtor account.
    pub currency: Currency,
    /// The remittance reference.
    pub reference: Reference,
    /// Where the payment is.
    pub status: PaymentStatus,
    /// The synchronous risk check's decision and reasons.
    pub risk: RiskDecision,
    /// The pending ledger transfer holding the funds, when there is one.
    pub hold_id: Option<TransferId>,
    /// The key the client sent; also the payment gateway's idempotency key.
    #[serde(skip)]
    pub idempotency_key: String,
    /// Why it failed or was rejected (a stable code), when it did.
    pub failure_code: Option<String>,
    /// The risk analyst who approved or rejected it, when one did.
    pub reviewer: Option<String>,
    /// Who created it (token subject).
    pub created_by: String,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: i64,
    /// When its status last changed, Unix milliseconds.
    pub updated_at_ms: i64,
}

impl Payment {
    /// A new payment in [`PaymentStatus::PendingRisk`], before the risk decision applies.
    pub fn new(
        new: &NewPayment,
        owner: String,
        created_by: String,
        risk: RiskDecision,
        idempotency_key: String,
        now_ms: i64,
    ) -> Self {
        Self {
            id: new.id(),
            owner,
            debtor_account: new.debtor_account(),
            beneficiary: new.beneficiary().clone(),
            amount: new.amount(),
            currency: new.currency(),
            reference: new.reference().clone(),
            status: PaymentStatus::PendingRisk,
            risk,
            hold_id: None,
            idempotency_key,
            failure_code: None,
            reviewer: None,
            created_by,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }

    /// Moves the payment by `trigger`; returns the event to announce.
    pub fn apply(
        &mut self,
        trigger: PaymentTrigger,
        now_ms: i64,
    ) -> Result<PaymentEvent, PaymentError> {
        let transition = self.status.transition(trigger)?;
        self.status = transition.status;
        self.updated_at_ms = now_ms;
        Ok(transition.event)
    }

    /// Whether money leaves the bank (through the payment gateway).
    pub fn is_external(&self) -> bool {
        matches!(self.beneficiary, Beneficiary::External { .. })
    }
}

impl Beneficiary {
    /// What identifies the beneficiary for the "new beneficiary" rule: the IBAN in its
    /// electronic form, or the internal account id.
    pub fn key(&self) -> String {
        match self {
            Self::Internal { account } => account.to_string(),
            Self::External { iban, .. } => iban.electronic().to_owned(),
        }
    }
}
