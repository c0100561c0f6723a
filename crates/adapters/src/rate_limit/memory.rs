//! GCRA state in a bounded, sharded in-process map.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use ferrobank_application::rate_limit::validate_key;
use ferrobank_application::{RateDecision, RateLimitError, RateLimiter, TokenBucket};

/// Shards of the map: contention stays low without a lock per key.
const SHARDS: usize = 16;

/// Per-key token buckets of one process, at most `max_keys` of them.
///
/// Time is the process's monotonic clock. A key whose bucket is full carries no state and
/// is dropped whenever a shard is full; if that frees too little, the buckets closest to
/// full go next (a flood of new keys can refill nearly full buckets, never a drained one).
#[derive(Debug)]
pub struct MemoryRateLimiter {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    hasher: RandomState,
    epoch: Instant,
}

/// Theoretical arrival times (microseconds since `epoch`) by key.
#[derive(Debug, Default)]
struct Shard {
    tats: HashMap<Box<str>, u64>,
}

impl MemoryRateLimiter {
    /// A limiter tracking at most `max_keys` keys (at least one per shard).
    pub fn new(max_keys: usize) -> Self {
        let shards = max_keys.clamp(1, SHARDS);
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity: (max_keys / shards).max(1),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    /// Keys currently holding state (buckets not yet known to be full).
    pub fn tracked_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).tats.len())
            .sum()
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

impl Shard {
    /// Makes room for one more key: drops full buckets, then, if fewer than a quarter of
    /// the slots are free, the buckets closest to full until a quarter is.
    fn make_room(&mut self, capacity: usize, now_us: u64) {
        self.tats.retain(|_, tat| *tat > now_us);
        let keep = capacity - capacity.div_ceil(4);
        if self.tats.len() <= keep {
            return;
        }
        let evict = self.tats.len() - keep;
        let mut tats: Vec<u64> = self.tats.values().copied().collect();
        let (_, cutoff, _) = tats.select_nth_unstable(evict - 1);
        let cutoff = *cutoff;
        self.tats.retain(|_, tat| *tat > cutoff);
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, key: &str, bucket: &TokenBucket) -> Result<RateDecision, RateLimitError> {
        validate_key(key)?;
        let index = usize::try_from(self.hasher.hash_one(key) % self.shards.len() as u64)
            .unwrap_or_default();
        // The state is plain numbers, always consistent: a panic elsewhere cannot corrupt it.
        let mut shard = self.shards[index].lock().unwrap_or_else(PoisonError::into_inner);
        let now_us = self.now_us();
        if let Some(tat) = shard.tats.get_mut(key) {
            let step = bucket.admit(*tat, now_us);
            *tat = step.tat_us;
            return Ok(step.decision);
        }
        // A key without state has a full bucket, so this admits.
        let step = bucket.admit(0, now_us);
        if shard.tats.len() >= self.shard_capacity {
            shard.make_room(self.shard_capacity, now_us);
        }
        shard.tats.insert(key.into(), step.tat_us);
        Ok(step.decision)
    }
}
