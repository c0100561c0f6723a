//! The life of a payment as a state machine.
//!
//! ```text
//!                 RiskAllowed                  Picked               Succeeded
//!   PendingRisk ─────────────────► Pending ──────────► Processing ──────────► Completed
//!     │     │                      ▲    │                   │
//!     │     │ RiskHeld    Approved │    │ Cancel            │ Failed
//!     │     └──► HeldForReview ────┘    ▼                   ▼
//!     │                 │           Cancelled             Failed
//!     │ RiskDenied      │ Rejected
//!     └────────────► Rejected ◄──┘
//! ```
//!
//! - A payment starts in `PendingRisk`; the synchronous risk check moves it on.
//! - `HeldForReview` waits for a `risk-analyst`: approval makes it `Pending` exactly as an
//!   `allow` would (and announces `transaction.created`, which is what the worker consumes),
//!   rejection ends it.
//! - `Pending` is the only state a customer may cancel from. The payment worker moves it to
//!   `Processing` (in its own committed step) before it calls the payment gateway, so a
//!   cancel can never race a charge: once the worker has it, the outcome is the gateway's.
//! - `Completed`, `Failed`, `Cancelled` and `Rejected` are terminal: every trigger is
//!   refused with `payment_already_final`, so a redelivered or late message cannot move a
//!   finished payment (the application treats that refusal as "already done").
//!
//! Every accepted transition names the one domain event to announce through the outbox.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::PaymentError;

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Created; the risk check has not decided yet.
    PendingRisk,
    /// The risk check asked for a human; waits for a `risk-analyst`.
    HeldForReview,
    /// Accepted, funds held; waiting for the payment worker. Cancellable.
    Pending,
    /// The worker has it and is settling it (gateway call, ledger post). Not cancellable.
    Processing,
    /// Settled: the hold was posted. Terminal.
    Completed,
    /// Definitively refused downstream: the hold was voided. Terminal.
    Failed,
    /// Cancelled by the customer while pending: the hold was voided. Terminal.
    Cancelled,
    /// Denied by the risk check or by an analyst; no money moved. Terminal.
    Rejected,
}

/// What happened to a payment: the input of [`PaymentStatus::transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentTrigger {
    /// The risk check allowed it.
    RiskAllowed,
    /// The risk check asked for a review.
    RiskHeld,
    /// The risk check denied it.
    RiskDenied,
    /// A `risk-analyst` approved the held payment.
    Approved,
    /// A `risk-analyst` rejected the held payment.
    Rejected,
    /// The payment worker picked it up.
    Picked,
    /// The gateway (or, inside the bank, the ledger) settled it.
    Succeeded,
    /// The gateway definitively refused it, or settlement failed for good.
    Failed,
    /// The customer cancelled it.
    Cancel,
}

/// A domain event to announce through the outbox; [`PaymentEvent::kind`] is its bus name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentEvent {
    /// `payment.held_for_review`
    HeldForReview,
    /// `payment.rejected`: by the risk check or by an analyst.
    Rejected,
    /// `transaction.created`: accepted, funds held; the worker's cue.
    TransactionCreated,
    /// `transaction.processing`: the worker took it; it can no longer be cancelled.
    TransactionProcessing,
    /// `transaction.completed`
    TransactionCompleted,
    /// `transaction.failed`
    TransactionFailed,
    /// `transaction.cancelled`
    TransactionCancelled,
}

/// An accepted transition: the new status and the event that announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The status after the trigger.
    pub status: PaymentStatus,
    /// The event to write to the outbox in the same transaction as the status.
    pub event: PaymentEvent,
}

impl PaymentStatus {
    /// Every status, in life order.
    pub const ALL: [PaymentStatus; 8] = [
        Self::PendingRisk,
        Self::HeldForReview,
        Self::Pending,
        Self::Processing,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::Rejected,
    ];

    /// Applies a trigger. Terminal states refuse everything (`payment_already_final`);
    /// cancelling anything but a pending payment is `payment_not_cancellable`; any other
    /// trigger that does not fit the state is `payment_invalid_transition`.
    pub fn transition(self, trigger: PaymentTrigger) -> Result<Transition, PaymentError> {
        use PaymentEvent as E;
        use PaymentStatus as S;
        use PaymentTrigger as T;

        if self.is_terminal() {
            return Err(PaymentError::AlreadyFinal { status: self });
        }
        let (status, event) = match (self, trigger) {
            (S::PendingRisk, T::RiskAllowed) => (S::Pending, E::TransactionCreated),
            (S::PendingRisk, T::RiskHeld) => (S::HeldForReview, E::HeldForReview),
            (S::PendingRisk, T::RiskDenied) => (S::Rejected, E::Rejected),
            (S::HeldForReview, T::Approved) => (S::Pending, E::TransactionCreated),
            (S::HeldForReview, T::Rejected) => (S::Rejected, E::Rejected),
            (S::Pending, T::Picked) => (S::Processing, E::TransactionProcessing),
            (S::Pending, T::Cancel) => (S::Cancelled, E::TransactionCancelled),
            (S::Processing, T::Succeeded) => (S::Completed, E::TransactionCompleted),
            (S::Processing, T::Failed) => (S::Failed, E::TransactionFailed),
            (status, T::Cancel) => return Err(PaymentError::NotCancellable { status }),
            (status, trigger) => return Err(PaymentError::InvalidTransition { status, trigger }),
        };
        Ok(Transition { status, event })
    }

    /// True for `Completed`, `Failed`, `Cancelled` and `Rejected`.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled | Self::Rejected)
    }

    /// The stored and wire name (`pending_risk`, `held_for_review`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingRisk => "pending_risk",
            Self::HeldForReview => "held_for_review",
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Rejected => "rejected",
        }
    }

    /// The status from its stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PaymentTrigger {
    /// Every trigger.
    pub const ALL: [PaymentTrigger; 9] = [
        Self::RiskAllowed,
        Self::RiskHeld,
        Self::RiskDenied,
        Self::Approved,
        Self::Rejected,
        Self::Picked,
        Self::Succeeded,
        Self::Failed,
        Self::Cancel,
    ];

    /// The wire name (`risk_allowed`, `cancel`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RiskAllowed => "risk_allowed",
            Self::RiskHeld => "risk_held",
            Self::RiskDenied => "risk_denied",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Picked => "picked",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancel => "cancel",
        }
    }
}

impl fmt::Display for PaymentTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PaymentEvent {
    /// The event type name used on the bus.
    pub fn kind(self) -> &'static str {
        match self {
            Self::HeldForReview => "payment.held_for_review",
            Self::Rejected => "payment.rejected",
            Self::TransactionCreated => "transaction.created",
            Self::TransactionProcessing => "transaction.processing",
            Self::TransactionCompleted => "transaction.completed",
            Self::TransactionFailed => "transaction.failed",
            Self::TransactionCancelled => "transaction.cancelled",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The whole table written out once, independently of the `match` above.
    const ACCEPTED: &[(PaymentStatus, PaymentTrigger, PaymentStatus, &str)] = {
        use PaymentStatus as S;
        use PaymentTrigger as T;
        &[
            (S::PendingRisk, T::RiskAllowed, S::Pending, "transaction.created"),
            (S::PendingRisk, T::RiskHeld, S::HeldForReview, "payment.held_for_review"),
            (S::PendingRisk, T::RiskDenied, S::Rejected, "payment.rejected"),
            (S::HeldForReview, T::Approved, S::Pending, "transaction.created"),
            (S::HeldForReview, T::Rejected, S::Rejected, "payment.rejected"),
            (S::Pending, T::Picked, S::Processing, "transaction.processing"),
            (S::Pending, T::Cancel, S::Cancelled, "transaction.cancelled"),
            (S::Processing, T::Succeeded, S::Completed, "transaction.completed"),
            (S::Processing, T::Failed, S::Failed, "transaction.failed"),
        ]
    };

    #[test]
    fn every_pair_of_status_and_trigger_follows_the_table() {
        for status in PaymentStatus::ALL {
            for trigger in PaymentTrigger::ALL {
                let expected = ACCEPTED
                    .iter()
                    .find(|(from, t, ..)| *from == status && *t == trigger)
                    .map(|&(_, _, to, kind)| (to, kind));
                let got = status.transition(trigger).map(|t| (t.status, t.event.kind()));
                match expected {
                    Some(want) => assert_eq!(got, Ok(want), "{status} + {trigger}"),
                    None => assert!(got.is_err(), "{status} + {trigger} accepted"),
                }
            }
        }
    }

    #[test]
    fn refusals_say_why() {
        let code = |s: PaymentStatus, t| s.transition(t).map_err(|e| e.code());
        assert_eq!(
            code(PaymentStatus::Completed, PaymentTrigger::Failed),
            Err("payment_already_final")
        );
        assert_eq!(
            code(PaymentStatus::Cancelled, PaymentTrigger::Cancel),
            Err("payment_already_final")
        );
        assert_eq!(
            code(PaymentStatus::Processing, PaymentTrigger::Cancel),
            Err("payment_not_cancellable")
        );
        assert_eq!(
            code(PaymentStatus::HeldForReview, PaymentTrigger::Cancel),
            Err("payment_not_cancellable")
        );
        assert_eq!(
            code(PaymentStatus::Pending, PaymentTrigger::Succeeded),
            Err("payment_invalid_transition")
        );
        assert_eq!(
            code(PaymentStatus::PendingRisk, PaymentTrigger::Picked),
            Err("payment_invalid_transition")
        );
    }

    #[test]
    fn names_round_trip_and_match_serde() {
        for status in PaymentStatus::ALL {
            assert_eq!(PaymentStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_string(&status).unwrap(), format!("\"{status}\""));
        }
        for trigger in PaymentTrigger::ALL {
            assert_eq!(serde_json::to_string(&trigger).unwrap(), format!("\"{trigger}\""));
        }
        assert_eq!(PaymentStatus::parse("done"), None);
    }
}
