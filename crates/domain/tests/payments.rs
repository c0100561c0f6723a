//! Property tests of the payment state machine.
//!
//! Random sequences of triggers (risk decisions, reviews, the worker, the gateway, the
//! customer's cancel) run from `pending_risk`. Whatever the order, a payment reaches at
//! most one final state and never leaves it, a cancel only ever succeeds before the worker
//! picked the payment, and every accepted step announces the event of the state it reached.
#![allow(clippy::unwrap_used)]

use ferrobank_domain::{PaymentError, PaymentStatus, PaymentTrigger};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const CASES: u32 = 512;
const MAX_STEPS: usize = 24;

/// The event every transition into `status` announces.
fn event_for(status: PaymentStatus) -> &'static str {
    match status {
        PaymentStatus::Pending => "transaction.created",
        PaymentStatus::HeldForReview => "payment.held_for_review",
        PaymentStatus::Processing => "transaction.processing",
        PaymentStatus::Completed => "transaction.completed",
        PaymentStatus::Failed => "transaction.failed",
        PaymentStatus::Cancelled => "transaction.cancelled",
        PaymentStatus::Rejected => "payment.rejected",
        PaymentStatus::PendingRisk => "none: nothing enters pending_risk",
    }
}

fn trigger() -> impl Strategy<Value = PaymentTrigger> {
    proptest::sample::select(PaymentTrigger::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_sequence_leaves_a_final_state_or_reaches_two(
        triggers in proptest::collection::vec(trigger(), 0..MAX_STEPS),
    ) {
        let mut status = PaymentStatus::PendingRisk;
        let mut finals = Vec::new();
        let mut picked = false;
        for trigger in triggers {
            match status.transition(trigger) {
                Ok(step) => {
                    prop_assert!(!status.is_terminal(), "{} left by {}", status, trigger);
                    prop_assert_ne!(step.status, status);
                    prop_assert_ne!(step.status, PaymentStatus::PendingRisk);
                    prop_assert_eq!(step.event.kind(), event_for(step.status));
                    if step.status == PaymentStatus::Cancelled {
                        prop_assert_eq!(status, PaymentStatus::Pending);
                        prop_assert!(!picked, "cancelled after the worker picked it");
                    }
                    if matches!(step.status, PaymentStatus::Completed | PaymentStatus::Failed) {
                        prop_assert_eq!(status, PaymentStatus::Processing);
                    }
                    picked |= step.status == PaymentStatus::Processing;
                    if step.status.is_terminal() {
                        finals.push(step.status);
                    }
                    status = step.status;
                }
                Err(error) => {
                    // A refusal changes nothing and says why.
                    if status.is_terminal() {
                        prop_assert_eq!(error, PaymentError::AlreadyFinal { status });
                    } else if trigger == PaymentTrigger::Cancel {
                        prop_assert_eq!(error, PaymentError::NotCancellable { status });
                    } else {
                        prop_assert_eq!(error, PaymentError::InvalidTransition { status, trigger });
                    }
                }
            }
        }
        prop_assert!(finals.len() <= 1, "final states reached: {:?}", finals);
        prop_assert_eq!(finals.first().copied(), status.is_terminal().then_some(status));
    }
}

/// Every status is reachable from `pending_risk`, and from every status that is not final
/// some sequence of triggers finishes the payment: there is no dead end.
#[test]
fn every_status_is_reachable_and_every_payment_can_finish() {
    let next = |status: PaymentStatus| {
        PaymentTrigger::ALL
            .into_iter()
            .filter_map(move |t| status.transition(t).ok())
            .map(|t| t.status)
    };
    let mut reached = vec![PaymentStatus::PendingRisk];
    let mut frontier = reached.clone();
    while let Some(status) = frontier.pop() {
        for to in next(status) {
            if !reached.contains(&to) {
                reached.push(to);
                frontier.push(to);
            }
        }
    }
    assert_eq!(reached.len(), PaymentStatus::ALL.len(), "reached {reached:?}");

    for start in PaymentStatus::ALL.into_iter().filter(|s| !s.is_terminal()) {
        let mut seen = vec![start];
        let mut frontier = vec![start];
        let mut finishes = false;
        while let Some(status) = frontier.pop() {
            finishes |= status.is_terminal();
            for to in next(status).filter(|to| !seen.contains(to)).collect::<Vec<_>>() {
                seen.push(to);
                frontier.push(to);
            }
        }
        assert!(finishes, "{start} cannot finish");
    }
}
