//! The two [`RateLimiter`](ferrobank_application::RateLimiter) backends: `memory` for one
//! process (development, a single gateway replica) and `redis` for replicas that must share
//! one limit. Both run the same GCRA step, `TokenBucket::admit`; the conformance suite in
//! `tests/rate_limit.rs` runs every case against both.

mod memory;
mod redis;

pub use self::memory::MemoryRateLimiter;
pub use self::redis::{RedisLimiterOptions, RedisRateLimiter};
