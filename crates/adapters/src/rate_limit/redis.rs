//! GCRA state in Redis, shared by every replica: one Lua script per check, run atomically.

use std::time::Duration;

use async_trait::async_trait;
use ferrobank_application::rate_limit::validate_key;
use ferrobank_application::{RateDecision, RateLimitError, RateLimiter, TokenBucket};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// `TokenBucket::admit` in Lua, on Redis's clock (`TIME`) so that replicas with skewed
/// clocks agree. The key is deleted (`PX`) when its bucket is full again: an absent key is a
/// full bucket. Numbers stay below 2^53, exact in Lua's doubles; `%d` writes them whole
/// (Lua's default `%.14g` would round). Needs Redis >= 5, where scripts replicate their
/// effects, so `TIME` may precede a write.
const GCRA_LUA: &str = r"
local emission_us = tonumber(ARGV[1])
local window_us = tonumber(ARGV[2])
local time = redis.call('TIME')
local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat_us = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat_us < now_us then tat_us = now_us end
local next_us = tat_us + emission_us
if next_us - now_us > window_us then
  return {0, tat_us - now_us}
end
local ttl_ms = math.ceil((next_us - now_us) / 1000)
redis.call('SET', KEYS[1], string.format('%d', next_us), 'PX', string.format('%d', ttl_ms))
return {1, next_us - now_us}
";

/// How to reach Redis and where the limiter's keys live.
#[derive(Debug, Clone)]
pub struct RedisLimiterOptions {
    /// Prepended to every key, so one Redis can serve several purposes.
    pub key_prefix: String,
    /// Longest wait for a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Longest a check may take, reconnecting included, in milliseconds: the limiter is on
    /// every request's path.
    pub check_timeout_ms: u64,
}

impl Default for RedisLimiterOptions {
    fn default() -> Self {
        Self {
            key_prefix: "ferrobank:ratelimit:".into(),
            connect_timeout_ms: 1_000,
            check_timeout_ms: 250,
        }
    }
}

/// Per-key token buckets in Redis; every limiter on the same Redis and prefix shares them.
///
/// One multiplexed connection; a check that finds it broken tries once to reconnect. A
/// failed or late check answers [`RateLimitError::Unavailable`].
#[derive(Clone)]
pub struct RedisRateLimiter {
    connection: ConnectionManager,
    key_prefix: String,
    check_timeout: Duration,
    script: redis::Script,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter").field("key_prefix", &self.key_prefix).finish()
    }
}

impl RedisRateLimiter {
    /// Connects to `url` (`redis://host:port/db`); fails if Redis cannot be reached now.
    pub async fn connect(url: &str, options: RedisLimiterOptions) -> Result<Self, RateLimitError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let check_timeout = Duration::from_millis(options.check_timeout_ms);
        // No retries: the redis crate waits at least a second before each one, and checks
        // wait for a reconnection in progress. A broken connection is retried by the next
        // check instead, each attempt bounded by the connect timeout.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(options.connect_timeout_ms))
            .set_response_timeout(check_timeout)
            .set_number_of_retries(0);
        let connection =
            ConnectionManager::new_with_config(client, config).await.map_err(unavailable)?;
        let script = redis::Script::new(GCRA_LUA);
        Ok(Self { connection, key_prefix: options.key_prefix, check_timeout, script })
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, key: &str, bucket: &TokenBucket) -> Result<RateDecision, RateLimitError> {
        validate_key(key)?;
        let mut connection = self.connection.clone();
        // EVALSHA, and EVAL (loading the script) when Redis does not know it yet.
        let mut invocation = self.script.key(format!("{}{key}", self.key_prefix));
        invocation.arg(bucket.emission_interval_us()).arg(bucket.window_us());
        let invocation = invocation.invoke_async::<(u8, u64)>(&mut connection);
        let (allowed, backlog_us) = tokio::time::timeout(self.check_timeout, invocation)
            .await
            .map_err(|_| RateLimitError::Unavailable("Redis did not answer in time".into()))?
            .map_err(unavailable)?;
        Ok(bucket.decision(allowed == 1, backlog_us))
    }
}

fn unavailable(error: redis::RedisError) -> RateLimitError {
    RateLimitError::Unavailable(error.to_string())
}
