//! The external payment gateway (PSP) as the payment worker sees it: one idempotent charge
//! per payment, keyed by the payment's idempotency key.
//!
//! An implementation owns the transport concerns: a timeout per attempt, retries with
//! exponential backoff and jitter on transient failures, and a circuit breaker that stops
//! calling a gateway that keeps failing. The worker only learns the outcome.

use async_trait::async_trait;

/// A charge as sent to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// The gateway de-duplicates on it: the same key is charged at most once.
    pub idempotency_key: String,
    /// Amount in minor units, > 0.
    pub amount_minor: i64,
    /// ISO 4217 alphabetic code.
    pub currency: String,
    /// Remittance reference shown to the beneficiary (1..=140 characters).
    pub reference: String,
    /// The beneficiary's IBAN (electronic form).
    pub beneficiary_iban: Option<String>,
}

/// What the gateway decided about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// Charged (first answer or a replay of it).
    Charged {
        /// The gateway's id of the charge.
        charge_id: String,
    },
    /// Definitively refused; nothing was charged and retrying will not change that.
    Declined {
        /// The gateway's reason, for the payment's failure code and logs.
        reason: String,
    },
}

/// Why no decision could be had from the gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PspError {
    /// Transient (timeout, connection refused, 5xx) after every attempt: try again later
    /// with the same key; the charge may or may not have happened.
    #[error("payment gateway unavailable: {0}")]
    Unavailable(String),
    /// The circuit breaker is open: the gateway was not called.
    #[error("payment gateway circuit open; retry after {retry_after_ms} ms")]
    CircuitOpen {
        /// When the breaker lets a trial call through.
        retry_after_ms: u64,
    },
    /// The gateway refused the request itself (4xx other than a decline): a bug on our
    /// side or a payment the gateway can never take; retrying will not help.
    #[error("payment gateway refused the request: {0}")]
    Refused(String),
}

/// The external payment gateway.
#[async_trait]
pub trait PaymentGateway: Send + Sync + std::fmt::Debug {
    /// Charges `request`, retrying transient failures within the implementation's budget.
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, PspError>;
}
