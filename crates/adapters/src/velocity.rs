//! Velocity counters of the risk check: in a bounded in-process map, or in Redis (one Lua
//! script per payment, so replicas share the counters and never both see the old totals).
//!
//! Both count in fixed windows (`window_s` seconds since the Unix epoch) and UTC days, and
//! saturate at `u32::MAX` payments and `u64::MAX` minor units. The window size is a
//! deployment constant: buckets are named by their start only, so two window sizes used at
//! once would share the buckets that start at the same second.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ferrobank_application::ports::StoreError;
use ferrobank_application::velocity::{VelocityBefore, VelocityStore};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Customers [`MemoryVelocity::default`] tracks at most.
pub const DEFAULT_MAX_CUSTOMERS: usize = 1_000_000;
/// Window buckets kept per customer in memory: the current one, the one before (for
/// payments stamped slightly in the past) and some slack for clock skew.
const MAX_WINDOWS_PER_CUSTOMER: usize = 4;
/// Day buckets kept per customer in memory: today and yesterday, and slack.
const MAX_DAYS_PER_CUSTOMER: usize = 3;
const MS_PER_DAY: i64 = 86_400_000;
/// How long a day hash lives in Redis after its last payment, in seconds (two days).
const DAY_TTL_S: u64 = 2 * 86_400;
/// Longest wait for a Redis connection, in milliseconds.
const REDIS_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Longest one `record` may take in Redis, reconnecting included, in milliseconds.
const REDIS_RECORD_TIMEOUT_MS: u64 = 1_000;

/// Where a payment at `now_ms` falls: its window's start (seconds) and its UTC day (days
/// since the epoch). A `window_s` of 0 is taken as 1 second.
fn position(now_ms: i64, window_s: u32) -> (i64, i64) {
    let window_s = i64::from(window_s.max(1));
    let now_s = now_ms.div_euclid(1_000);
    (now_s.div_euclid(window_s) * window_s, now_ms.div_euclid(MS_PER_DAY))
}

/// `yyyymmdd` of a day since the Unix epoch (proleptic Gregorian, UTC), by Howard
/// Hinnant's `civil_from_days`: no range limit, no failure.
fn yyyymmdd(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}")
}

/// One window of one customer.
#[derive(Debug)]
struct WindowBucket {
    start_s: i64,
    count: u32,
    amounts: HashMap<String, u64>,
}

/// One UTC day of one customer.
#[derive(Debug)]
struct DayBucket {
    day: i64,
    amounts: HashMap<String, u64>,
}

/// One customer's live buckets.
#[derive(Debug, Default)]
struct Counters {
    windows: Vec<WindowBucket>,
    days: Vec<DayBucket>,
}

impl Counters {
    /// Drops buckets that Redis would have expired: windows ended more than a window ago,
    /// days before yesterday; then the oldest beyond the per-customer bounds.
    fn prune(&mut self, window_start_s: i64, window_s: i64, day: i64) {
        self.windows.retain(|w| w.start_s >= window_start_s.saturating_sub(window_s));
        self.days.retain(|d| d.day >= day.saturating_sub(1));
        while self.windows.len() > MAX_WINDOWS_PER_CUSTOMER {
            remove_min_by_key(&mut self.windows, |w| w.start_s);
        }
        while self.days.len() > MAX_DAYS_PER_CUSTOMER {
            remove_min_by_key(&mut self.days, |d| d.day);
        }
    }

    fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.days.is_empty()
    }
}

fn remove_min_by_key<T>(items: &mut Vec<T>, key: impl Fn(&T) -> i64) {
    if let Some(index) = (0..items.len()).min_by_key(|&i| key(&items[i])) {
        items.swap_remove(index);
    }
}

/// Velocity counters of one process, for at most `max_customers` customers.
///
/// Each call prunes the customer's expired buckets; when a new customer would exceed the
/// bound, every customer's expired buckets are dropped, and if that frees nothing the call
/// fails with [`StoreError::Unavailable`] rather than forgetting live counters (forgetting
/// would let a customer's limits reset).
#[derive(Debug)]
pub struct MemoryVelocity {
    customers: Mutex<HashMap<String, Counters>>,
    max_customers: usize,
}

impl Default for MemoryVelocity {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CUSTOMERS)
    }
}

impl MemoryVelocity {
    /// Counters for at most `max_customers` (at least 1) customers at once.
    pub fn new(max_customers: usize) -> Self {
        Self { customers: Mutex::new(HashMap::new()), max_customers: max_customers.max(1) }
    }

    /// Customers currently holding counters.
    pub fn tracked_customers(&self) -> usize {
        self.customers.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[async_trait]
impl VelocityStore for MemoryVelocity {
    async fn record(
        &self,
        customer: &str,
        currency: &str,
        amount_minor: u64,
        now_ms: i64,
        window_s: u32,
    ) -> Result<VelocityBefore, StoreError> {
        let (window_start_s, day) = position(now_ms, window_s);
        let window_len_s = i64::from(window_s.max(1));
        // Plain counters: a panic elsewhere cannot leave them half-updated.
        let mut customers = self.customers.lock().unwrap_or_else(PoisonError::into_inner);
        if !customers.contains_key(customer) && customers.len() >= self.max_customers {
            customers.retain(|_, counters| {
                counters.prune(window_start_s, window_len_s, day);
                !counters.is_empty()
            });
            if customers.len() >= self.max_customers {
                return Err(StoreError::Unavailable(format!(
                    "velocity counters full: {} customers with live counters",
                    customers.len()
                )));
            }
        }
        let counters = customers.entry(customer.to_owned()).or_default();
        counters.prune(window_start_s, window_len_s, day);

        let window = match counters.windows.iter().position(|w| w.start_s == window_start_s) {
            Some(index) => &mut counters.windows[index],
            None => {
                counters.windows.push(WindowBucket {
                    start_s: window_start_s,
                    count: 0,
                    amounts: HashMap::new(),
                });
                let last = counters.windows.len() - 1;
                &mut counters.windows[last]
            }
        };
        let count_in_window = window.count;
        window.count = window.count.saturating_add(1);
        let window_amount = window.amounts.entry(currency.to_owned()).or_insert(0);
        let amount_in_window_minor = *window_amount;
        *window_amount = window_amount.saturating_add(amount_minor);

        let today = match counters.days.iter().position(|d| d.day == day) {
            Some(index) => &mut counters.days[index],
            None => {
                counters.days.push(DayBucket { day, amounts: HashMap::new() });
                let last = counters.days.len() - 1;
                &mut counters.days[last]
            }
        };
        let day_amount = today.amounts.entry(currency.to_owned()).or_insert(0);
        let amount_today_minor = *day_amount;
        *day_amount = day_amount.saturating_add(amount_minor);

        Ok(VelocityBefore { count_in_window, amount_in_window_minor, amount_today_minor })
    }
}

/// Counts one payment atomically and returns the totals before it.
///
/// KEYS[1] the window hash, KEYS[2] the day hash; ARGV[1] the amount (decimal), ARGV[2] the
/// currency's field (`amt:EUR`), ARGV[3] and ARGV[4] the TTLs in seconds.
///
/// Amounts are stored as decimal strings and added digit by digit, saturating at
/// `u64::MAX`: Lua's numbers are doubles (exact only below 2^53) and `HINCRBY` stops at
/// `i64::MAX`. The count is small enough for `HINCRBY`; it stops at `u32::MAX`. Everything
/// comes back as strings, so no value passes through a double. A stored value that is not
/// a `u64` fails the script instead of being overwritten.
const RECORD_LUA: &str = r"
local MAX = '18446744073709551615'
local function add(a, b)
  local digits = {}
  local i, j, carry = #a, #b, 0
  while i > 0 or j > 0 or carry > 0 do
    local s = carry
    if i > 0 then s = s + string.byte(a, i) - 48 end
    if j > 0 then s = s + string.byte(b, j) - 48 end
    if s >= 10 then carry = 1; s = s - 10 else carry = 0 end
    digits[#digits + 1] = string.char(48 + s)
    i = i - 1
    j = j - 1
  end
  local sum = string.reverse(table.concat(digits))
  if #sum > #MAX or (#sum == #MAX and sum > MAX) then return MAX end
  return sum
end
local count = redis.call('HGET', KEYS[1], 'count') or '0'
local window_amt = redis.call('HGET', KEYS[1], ARGV[2]) or '0'
local day_amt = redis.call('HGET', KEYS[2], ARGV[2]) or '0'
for _, v in ipairs({count, window_amt, day_amt, ARGV[1]}) do
  if not string.match(v, '^%d+$') or #v > #MAX or (#v == #MAX and v > MAX) then
    return redis.error_reply('velocity counter is not an unsigned 64-bit integer')
  end
end
if #count < 10 or (#count == 10 and count < '4294967295') then
  redis.call('HINCRBY', KEYS[1], 'count', 1)
end
redis.call('HSET', KEYS[1], ARGV[2], add(window_amt, ARGV[1]))
redis.call('HSET', KEYS[2], ARGV[2], add(day_amt, ARGV[1]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {count, window_amt, day_amt}
";

/// Velocity counters in Redis, shared by every replica using the same Redis and prefix.
///
/// Keys: `{prefix}vel:{customer}:{window_start_s}` (fields `count`, `amt:{currency}`;
/// expires two windows after its last payment) and `{prefix}day:{customer}:{yyyymmdd}`
/// (fields `amt:{currency}`; expires two days after its last payment). Both keys of a
/// payment are written by one script, so it needs a single Redis, not a cluster.
#[derive(Clone)]
pub struct RedisVelocity {
    connection: ConnectionManager,
    key_prefix: String,
    timeout: Duration,
    script: redis::Script,
}

impl std::fmt::Debug for RedisVelocity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisVelocity").field("key_prefix", &self.key_prefix).finish()
    }
}

impl RedisVelocity {
    /// Connects to `url` (`redis://host:port/db`), keys under `key_prefix`; fails if Redis
    /// cannot be reached now.
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let timeout = Duration::from_millis(REDIS_RECORD_TIMEOUT_MS);
        // As the rate limiter: no retries inside the redis crate (it waits a second before
        // each); the next call reconnects, bounded by the connection timeout.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(REDIS_CONNECT_TIMEOUT_MS))
            .set_response_timeout(timeout)
            .set_number_of_retries(0);
        let connection =
            ConnectionManager::new_with_config(client, config).await.map_err(unavailable)?;
        Ok(Self {
            connection,
            key_prefix: key_prefix.to_owned(),
            timeout,
            script: redis::Script::new(RECORD_LUA),
        })
    }
}

#[async_trait]
impl VelocityStore for RedisVelocity {
    async fn record(
        &self,
        customer: &str,
        currency: &str,
        amount_minor: u64,
        now_ms: i64,
        window_s: u32,
    ) -> Result<VelocityBefore, StoreError> {
        let (window_start_s, day) = position(now_ms, window_s);
        let prefix = &self.key_prefix;
        let mut invocation = self.script.key(format!("{prefix}vel:{customer}:{window_start_s}"));
        invocation
            .key(format!("{prefix}day:{customer}:{}", yyyymmdd(day)))
            .arg(amount_minor.to_string())
            .arg(format!("amt:{currency}"))
            .arg(u64::from(window_s.max(1)) * 2)
            .arg(DAY_TTL_S);
        let mut connection = self.connection.clone();
        // EVALSHA, and EVAL (loading the script) when Redis does not know it yet.
        let call = invocation.invoke_async::<(String, String, String)>(&mut connection);
        let (count, window_amount, day_amount) = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError::Unavailable("Redis did not answer in time".into()))?
            .map_err(unavailable)?;
        let corrupt = |what: &str, value: &str| {
            StoreError::Corrupt(format!("velocity {what} {value:?} is out of range"))
        };
        Ok(VelocityBefore {
            count_in_window: count.parse().map_err(|_| corrupt("count", &count))?,
            amount_in_window_minor: window_amount
                .parse()
                .map_err(|_| corrupt("window amount", &window_amount))?,
            amount_today_minor: day_amount
                .parse()
                .map_err(|_| corrupt("day amount", &day_amount))?,
        })
    }
}

fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_named_by_their_utc_date() {
        assert_eq!(yyyymmdd(0), "19700101");
        assert_eq!(yyyymmdd(-1), "19691231");
        // 2024-02-29 and 2024-03-01: a leap day.
        assert_eq!(yyyymmdd(19_782), "20240229");
        assert_eq!(yyyymmdd(19_783), "20240301");
        assert_eq!(yyyymmdd(10_956), "19991231");
        assert_eq!(yyyymmdd(11_016), "20000229");
    }

    #[test]
    fn windows_start_at_multiples_of_their_length() {
        assert_eq!(position(3_599_999, 3_600), (0, 0));
        assert_eq!(position(3_600_000, 3_600), (3_600, 0));
        assert_eq!(position(-1, 60), (-60, -1));
        assert_eq!(position(86_400_000, 0), (86_400, 1));
    }
}
