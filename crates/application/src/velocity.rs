//! Velocity counters of the risk check: how much and how often a customer paid lately.
//!
//! In memory for one process, in Redis when several replicas share them. Counting is
//! atomic with reading: [`VelocityStore::record`] adds the payment and returns the totals
//! as they were before it, so two concurrent payments never both see the old totals.
//! Every attempt is counted, including payments the risk check or the ledger then refuses:
//! velocity limits attempts, as card schemes do.

use async_trait::async_trait;

use crate::ports::StoreError;

/// A customer's totals before the payment being checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VelocityBefore {
    /// Payments in the sliding window that ends now (not this one), in every currency.
    pub count_in_window: u32,
    /// Their total in the payment's currency, minor units.
    pub amount_in_window_minor: u64,
    /// Today's total (UTC calendar day) in the payment's currency, minor units.
    pub amount_today_minor: u64,
}

/// Where velocity counters live.
///
/// The window slides: a payment counts for at least `window_s` seconds after it (the
/// stores count in slices of `window_s / 60`, so at most two slices longer). A day starts
/// at 00:00 UTC. Counters expire on their own after their window or day.
#[async_trait]
pub trait VelocityStore: Send + Sync + std::fmt::Debug {
    /// Counts a payment of `amount_minor` in `currency` (ISO 4217 alphabetic) by
    /// `customer` at `now_ms` and returns the totals before it. Saturates instead of
    /// overflowing.
    async fn record(
        &self,
        customer: &str,
        currency: &str,
        amount_minor: u64,
        now_ms: i64,
        window_s: u32,
    ) -> Result<VelocityBefore, StoreError>;
}
