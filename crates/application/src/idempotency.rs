//! The `Idempotency-Key` header (IETF httpapi draft "The Idempotency-Key HTTP Header
//! Field", draft-ietf-httpapi-idempotency-key-header): the first response to a key is
//! stored and replayed; the same key with another request is refused; a key whose first
//! request is still running answers 409.

use async_trait::async_trait;

use crate::ports::StoreError;

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is new (or its previous holder died): run the request, then `finish`.
    Claimed,
    /// The first request with this key finished; replay its response.
    Replay {
        /// HTTP status of the first response.
        status: u16,
        /// Its body.
        body: String,
    },
    /// The key was used with a different request (method, path or body).
    Mismatch,
    /// The first request with this key is still being processed.
    InFlight,
}

/// Storage for idempotency keys; lives in the same database as the ledger.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + std::fmt::Debug + 'static {
    /// Claims `key` within `scope` for a request with fingerprint `request_hash`.
    ///
    /// A claim lasts `lease_ms`; a claim older than that is taken over, so a crash
    /// between claim and finish never blocks a key forever.
    async fn claim(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<KeyClaim, StoreError>;

    /// Stores the response of a claimed key.
    async fn finish(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError>;

    /// Forgets a claimed key whose request failed for a reason worth retrying (5xx).
    async fn release(&self, scope: &str, key: &str) -> Result<(), StoreError>;

    /// Deletes keys created before `before_ms`; returns how many.
    async fn purge(&self, before_ms: i64) -> Result<u64, StoreError>;
}
