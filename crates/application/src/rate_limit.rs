//! Rate limiting as a port: a token bucket with the numbers of Envoy's
//! `envoy.filters.http.local_ratelimit` (`max_tokens`, `tokens_per_fill`, `fill_interval`),
//! enforced per key by GCRA (the generic cell rate algorithm).
//!
//! GCRA keeps one number per key, the theoretical arrival time (TAT): the instant at which
//! the bucket would be full again. A request is admitted when adding one emission interval
//! (`fill_interval / tokens_per_fill`) to the TAT keeps it within the burst window
//! (`max_tokens` emission intervals) of now. Burst and long-run rate equal Envoy's; the
//! refill is continuous (one token per emission interval) where Envoy adds
//! `tokens_per_fill` at once every `fill_interval`. The step itself is pure
//! ([`TokenBucket::admit`]) so every backend decides alike; the Redis backend runs the same
//! step in Lua.
//!
//! Times are integer microseconds (no floats): the emission interval is truncated to whole
//! microseconds, which admits at most one request per million more than Envoy would.

use async_trait::async_trait;

/// Longest key a limiter accepts, in bytes: keys are chosen by the caller (route and client
/// identity) and stored, so they are bounded like everything else.
pub const MAX_KEY_BYTES: usize = 512;

/// Longest time an empty bucket may take to fill again (`max_tokens` emission intervals),
/// in microseconds: 366 days. Keeps every sum of times well inside `u64` and inside the
/// integers a Lua number (a double) holds exactly.
pub const MAX_WINDOW_US: u64 = 366 * 24 * 3600 * 1_000_000;

/// A token bucket as Envoy's `local_ratelimit` configures it; all three numbers are > 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval_ms: u64,
}

/// Why a [`TokenBucket`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBucket {
    /// A number is zero.
    #[error("max_tokens, tokens_per_fill and fill_interval_ms must all be greater than 0")]
    Zero,
    /// More than one token per microsecond.
    #[error("fill_interval_ms / tokens_per_fill must be at least 1 microsecond")]
    TooFast,
    /// An empty bucket would take longer than [`MAX_WINDOW_US`] to fill.
    #[error("max_tokens * fill_interval_ms / tokens_per_fill must be at most 366 days")]
    TooSlow,
}

impl TokenBucket {
    /// A bucket holding up to `max_tokens`, refilled by `tokens_per_fill` every
    /// `fill_interval_ms`.
    pub fn new(
        max_tokens: u32,
        tokens_per_fill: u32,
        fill_interval_ms: u64,
    ) -> Result<Self, InvalidBucket> {
        if max_tokens == 0 || tokens_per_fill == 0 || fill_interval_ms == 0 {
            return Err(InvalidBucket::Zero);
        }
        let fill_interval_us =
            fill_interval_ms.checked_mul(1_000).filter(|us| *us <= MAX_WINDOW_US);
        let Some(fill_interval_us) = fill_interval_us else {
            return Err(InvalidBucket::TooSlow);
        };
        let emission_us = fill_interval_us / u64::from(tokens_per_fill);
        if emission_us == 0 {
            return Err(InvalidBucket::TooFast);
        }
        if emission_us.saturating_mul(u64::from(max_tokens)) > MAX_WINDOW_US {
            return Err(InvalidBucket::TooSlow);
        }
        Ok(Self { max_tokens, tokens_per_fill, fill_interval_ms })
    }

    /// Most requests admitted at once (Envoy's `max_tokens`).
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    /// Tokens added per fill interval (Envoy's `tokens_per_fill`).
    pub fn tokens_per_fill(&self) -> u32 {
        self.tokens_per_fill
    }

    /// The fill interval (Envoy's `fill_interval`), in milliseconds.
    pub fn fill_interval_ms(&self) -> u64 {
        self.fill_interval_ms
    }

    /// Time between two tokens, in microseconds (at least 1).
    pub fn emission_interval_us(&self) -> u64 {
        self.fill_interval_ms * 1_000 / u64::from(self.tokens_per_fill)
    }

    /// Time for an empty bucket to fill, in microseconds (GCRA's delay variation tolerance).
    pub fn window_us(&self) -> u64 {
        self.emission_interval_us() * u64::from(self.max_tokens)
    }

    /// The `w` of a `RateLimit-Policy` header: [`Self::window_us`] in seconds, rounded up.
    pub fn window_secs(&self) -> u64 {
        self.window_us().div_ceil(1_000_000)
    }

    /// One GCRA step at `now_us`: `tat_us` is the key's stored theoretical arrival time
    /// (0, or anything not after `now_us`, for a key with a full bucket); the result says
    /// whether the request is admitted and which TAT to store.
    pub fn admit(&self, tat_us: u64, now_us: u64) -> Admission {
        let tat_us = tat_us.max(now_us);
        let next_us = tat_us.saturating_add(self.emission_interval_us());
        if next_us - now_us <= self.window_us() {
            Admission { decision: self.decision(true, next_us - now_us), tat_us: next_us }
        } else {
            Admission { decision: self.decision(false, tat_us - now_us), tat_us }
        }
    }

    /// The decision for a request given whether it was admitted and `backlog_us`, how far the
    /// TAT is ahead of now after the step (the TAT stored by an admission, or the unchanged
    /// one of a refusal). Backends that run the step elsewhere (Redis) build it from these.
    pub fn decision(&self, allowed: bool, backlog_us: u64) -> RateDecision {
        let emission_us = self.emission_interval_us();
        let window_us = self.window_us();
        let remaining = window_us.saturating_sub(backlog_us) / emission_us;
        let retry_after_us =
            if allowed { 0 } else { (backlog_us + emission_us).saturating_sub(window_us).max(1) };
        RateDecision {
            allowed,
            limit: self.max_tokens,
            remaining: u32::try_from(remaining).unwrap_or(self.max_tokens).min(self.max_tokens),
            reset_after_ms: backlog_us.div_ceil(1_000),
            retry_after_ms: retry_after_us.div_ceil(1_000),
        }
    }
}

/// The result of [`TokenBucket::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// What to answer.
    pub decision: RateDecision,
    /// The theoretical arrival time to store for the key, in microseconds.
    pub tat_us: u64,
}

/// What a limiter decided for one request; the numbers of the IETF RateLimit headers
/// (draft-ietf-httpapi-ratelimit-headers) and `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// The request may proceed (it took a token).
    pub allowed: bool,
    /// The bucket's `max_tokens`: `limit` of `RateLimit`, the quota of `RateLimit-Policy`.
    pub limit: u32,
    /// Tokens left after this request: `remaining` of `RateLimit`.
    pub remaining: u32,
    /// Until the bucket is full again, in milliseconds.
    pub reset_after_ms: u64,
    /// Until a request can be admitted, in milliseconds; 0 when allowed, > 0 when refused.
    pub retry_after_ms: u64,
}

impl RateDecision {
    /// `reset` of the `RateLimit` header: seconds until the bucket is full, rounded up.
    pub fn reset_secs(&self) -> u64 {
        self.reset_after_ms.div_ceil(1_000)
    }

    /// The `Retry-After` header: seconds until a retry can succeed, rounded up (0 if allowed).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_ms.div_ceil(1_000)
    }
}

/// Why a limiter could not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// The key is empty or longer than [`MAX_KEY_BYTES`]: a bug of the caller.
    #[error("rate-limit key must be 1 to {MAX_KEY_BYTES} bytes")]
    InvalidKey,
    /// The shared store could not be reached or answered unexpectedly.
    #[error("rate-limit store unavailable: {0}")]
    Unavailable(String),
}

/// Checks requests against per-key token buckets. Implementations: in memory (one process)
/// and Redis (replicas share one limit).
#[async_trait]
pub trait RateLimiter: Send + Sync + std::fmt::Debug {
    /// Takes one token from the bucket of `key` (e.g. `route:/api/payments|azp:web-app`),
    /// if it has one.
    ///
    /// An error means nothing was decided. The caller chooses by configuration what that
    /// means: fail open (let the request through and log; availability wins, the limit
    /// is a protection rather than a contract) or fail closed (answer 503 with
    /// `Retry-After`; for limits that guard against abuse such as login attempts).
    async fn check(&self, key: &str, bucket: &TokenBucket) -> Result<RateDecision, RateLimitError>;
}

/// Refuses keys a limiter must not store: empty or longer than [`MAX_KEY_BYTES`].
pub fn validate_key(key: &str) -> Result<(), RateLimitError> {
    match key.len() {
        1..=MAX_KEY_BYTES => Ok(()),
        _ => Err(RateLimitError::InvalidKey),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(max_tokens: u32, tokens_per_fill: u32, fill_interval_ms: u64) -> TokenBucket {
        TokenBucket::new(max_tokens, tokens_per_fill, fill_interval_ms).unwrap_or_else(|e| {
            panic!("bucket {max_tokens}/{tokens_per_fill}/{fill_interval_ms}: {e}")
        })
    }

    #[test]
    fn buckets_out_of_bounds_are_refused() {
        assert_eq!(TokenBucket::new(0, 1, 1_000), Err(InvalidBucket::Zero));
        assert_eq!(TokenBucket::new(1, 0, 1_000), Err(InvalidBucket::Zero));
        assert_eq!(TokenBucket::new(1, 1, 0), Err(InvalidBucket::Zero));
        assert_eq!(TokenBucket::new(1, 2_000, 1), Err(InvalidBucket::TooFast));
        assert_eq!(TokenBucket::new(1, 1, u64::MAX), Err(InvalidBucket::TooSlow));
        assert_eq!(TokenBucket::new(u32::MAX, 1, 86_400_000), Err(InvalidBucket::TooSlow));
        assert_eq!(bucket(1, 1_000, 1).emission_interval_us(), 1);
        assert_eq!(bucket(366, 1, 86_400_000).window_us(), MAX_WINDOW_US);
    }

    #[test]
    fn a_full_bucket_admits_exactly_max_tokens_at_once() {
        let b = bucket(3, 1, 1_000);
        let now = 5_000_000;
        let mut tat = 0;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let step = b.admit(tat, now);
            assert!(step.decision.allowed);
            assert_eq!(step.decision.retry_after_ms, 0);
            remaining.push(step.decision.remaining);
            tat = step.tat_us;
        }
        assert_eq!(remaining, [2, 1, 0]);
        let refused = b.admit(tat, now);
        assert!(!refused.decision.allowed);
        assert_eq!(refused.tat_us, tat, "a refusal takes nothing");
        assert_eq!(refused.decision.remaining, 0);
        assert_eq!(refused.decision.retry_after_ms, 1_000);
        assert_eq!(refused.decision.reset_after_ms, 3_000);
        assert_eq!((refused.decision.retry_after_secs(), refused.decision.reset_secs()), (1, 3));
    }

    #[test]
    fn tokens_come_back_one_emission_interval_at_a_time() {
        // Envoy: 10 tokens, 5 every second, so one every 200 ms.
        let b = bucket(10, 5, 1_000);
        assert_eq!(b.emission_interval_us(), 200_000);
        assert_eq!(b.window_secs(), 2);
        let mut tat = 0;
        for _ in 0..10 {
            tat = b.admit(tat, 0).tat_us;
        }
        let refused = b.admit(tat, 199_999);
        assert!(!refused.decision.allowed);
        assert_eq!(refused.decision.retry_after_ms, 1, "1 us away rounds up to 1 ms");
        let later = b.admit(tat, 200_000);
        assert!(later.decision.allowed);
        assert_eq!(later.decision.remaining, 0);
        // Long idle: full again, never more than max_tokens.
        let idle = b.admit(later.tat_us, 3_600_000_000);
        assert_eq!(idle.decision.remaining, 9);
        assert_eq!(idle.decision.reset_after_ms, 200);
    }

    #[test]
    fn long_run_rate_is_tokens_per_fill_per_interval() {
        let b = bucket(2, 3, 1_000);
        let (mut tat, mut admitted) = (0, 0);
        // One attempt per millisecond for 10 s: 2 at once, then 3 per second.
        for now_ms in 0..10_000u64 {
            let step = b.admit(tat, now_ms * 1_000);
            tat = step.tat_us;
            admitted += u32::from(step.decision.allowed);
        }
        assert_eq!(admitted, 2 + 29);
    }

    #[test]
    fn keys_are_bounded() {
        assert_eq!(validate_key(""), Err(RateLimitError::InvalidKey));
        assert_eq!(validate_key(&"k".repeat(MAX_KEY_BYTES + 1)), Err(RateLimitError::InvalidKey));
        assert_eq!(validate_key("route:/api/payments|azp:banking-web-app"), Ok(()));
    }
}
