//! Velocity counters of the risk check: in a bounded in-process map, or in Redis (one Lua
//! script per payment, so replicas share the counters and never both see the old totals).
//!
//! The window slides: it is counted in [`SLICES_PER_WINDOW`] slices of `window_s / 60`
//! seconds (at least one second), and a payment counts while its slice is among the
//! current one and the `ceil(window_s / slice)` before it, that is for at least `window_s`
//! and less than `window_s` plus two slices. A fixed window (reset at multiples of
//! `window_s`) let a customer make twice the limit around a reset. Days are UTC calendar
//! days. Both saturate at `u32::MAX` payments and `u64::MAX` minor units.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ferrobank_application::ports::StoreError;
use ferrobank_application::velocity::{VelocityBefore, VelocityStore};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Customers [`MemoryVelocity::default`] tracks at most.
pub const DEFAULT_MAX_CUSTOMERS: usize = 1_000_000;
/// Slices a velocity window is counted in.
pub const SLICES_PER_WINDOW: i64 = 60;
/// Slices kept per customer in memory: those counted (at most 61) and slack for payments
/// stamped by a clock slightly ahead.
const MAX_SLICES_PER_CUSTOMER: usize = 64;
/// Day buckets kept per customer in memory: today and yesterday, and slack.
const MAX_DAYS_PER_CUSTOMER: usize = 3;
const MS_PER_DAY: i64 = 86_400_000;
/// How long a day hash lives in Redis after its last payment, in seconds (two days).
const DAY_TTL_S: u64 = 2 * 86_400;
/// Longest wait for a Redis connection, in milliseconds.
const REDIS_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Longest one `record` may take in Redis, reconnecting included, in milliseconds.
const REDIS_RECORD_TIMEOUT_MS: u64 = 1_000;

/// Where a payment at `now_ms` falls in a window of `window_s` seconds (0 is taken as 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slicing {
    /// The slice length in seconds.
    len_s: i64,
    /// The slice of `now_ms`: seconds since the epoch divided by `len_s`.
    current: i64,
    /// The oldest slice still counted.
    oldest: i64,
}

impl Slicing {
    fn of(now_ms: i64, window_s: u32) -> Self {
        let window_s = i64::from(window_s.max(1));
        let len_s = (window_s + SLICES_PER_WINDOW - 1) / SLICES_PER_WINDOW;
        // Enough whole slices to cover the window.
        let slices = (window_s + len_s - 1) / len_s;
        let current = now_ms.div_euclid(1_000).div_euclid(len_s);
        Self { len_s, current, oldest: current - slices }
    }
}

/// The UTC day of `now_ms` (days since the epoch).
fn day_of(now_ms: i64) -> i64 {
    now_ms.div_euclid(MS_PER_DAY)
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

/// One slice of one customer's window.
#[derive(Debug)]
struct SliceBucket {
    slice: i64,
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
    slices: Vec<SliceBucket>,
    days: Vec<DayBucket>,
}

impl Counters {
    /// Drops slices no longer counted and days before yesterday (what Redis expires or
    /// deletes), then the oldest beyond the per-customer bounds.
    fn prune(&mut self, slicing: Slicing, day: i64) {
        self.slices.retain(|s| s.slice >= slicing.oldest);
        self.days.retain(|d| d.day >= day.saturating_sub(1));
        while self.slices.len() > MAX_SLICES_PER_CUSTOMER {
            remove_min_by_key(&mut self.slices, |s| s.slice);
        }
        while self.days.len() > MAX_DAYS_PER_CUSTOMER {
            remove_min_by_key(&mut self.days, |d| d.day);
        }
    }

    fn is_empty(&self) -> bool {
        self.slices.is_empty() && self.days.is_empty()
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
        let slicing = Slicing::of(now_ms, window_s);
        let day = day_of(now_ms);
        // Plain counters: a panic elsewhere cannot leave them half-updated.
        let mut customers = self.customers.lock().unwrap_or_else(PoisonError::into_inner);
        if !customers.contains_key(customer) && customers.len() >= self.max_customers {
            customers.retain(|_, counters| {
                counters.prune(slicing, day);
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
        counters.prune(slicing, day);

        // Every slice left is counted (a slice ahead of this clock too).
        let count_in_window =
            counters.slices.iter().fold(0_u32, |sum, s| sum.saturating_add(s.count));
        let amount_in_window_minor = counters.slices.iter().fold(0_u64, |sum, s| {
            sum.saturating_add(s.amounts.get(currency).copied().unwrap_or(0))
        });
        let slice = match counters.slices.iter().position(|s| s.slice == slicing.current) {
            Some(index) => &mut counters.slices[index],
            None => {
                counters.slices.push(SliceBucket {
                    slice: slicing.current,
                    count: 0,
                    amounts: HashMap::new(),
                });
                let last = counters.slices.len() - 1;
                &mut counters.slices[last]
            }
        };
        slice.count = slice.count.saturating_add(1);
        let slice_amount = slice.amounts.entry(currency.to_owned()).or_insert(0);
        *slice_amount = slice_amount.saturating_add(amount_minor);

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
/// KEYS[1] the customer's slices hash, KEYS[2] the day hash; ARGV[1] the amount (decimal),
/// ARGV[2] the currency, ARGV[3] the current slice, ARGV[4] the oldest slice counted,
/// ARGV[5] and ARGV[6] the TTLs in seconds. Slice fields are `c:{slice}` (the count) and
/// `a:{slice}:{currency}`; fields of slices no longer counted are deleted.
///
/// Amounts are stored as decimal strings and added digit by digit, saturating at
/// `u64::MAX`: Lua's numbers are doubles (exact only below 2^53) and `HINCRBY` stops at
/// `i64::MAX`. Counts saturate at `u32::MAX`. Everything comes back as strings, so no
/// value passes through a double (slice numbers do: seconds / slice length, far below
/// 2^53). A counted value that is not a `u64` fails the script instead of being overwritten.
const RECORD_LUA: &str = r"
local MAX = '18446744073709551615'
local U32 = '4294967295'
local function above(v, limit)
  return #v > #limit or (#v == #limit and v > limit)
end
local function valid(v)
  return string.match(v, '^%d+$') ~= nil and not above(v, MAX)
end
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
  if above(sum, MAX) then return MAX end
  return sum
end
local function count_of(v)
  if above(v, U32) then return U32 end
  return v
end
local current, oldest = tonumber(ARGV[3]), tonumber(ARGV[4])
local count, amount, slice_count, slice_amount = '0', '0', '0', '0'
local stale = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local field, value = fields[i], fields[i + 1]
  local kind, slice, currency = string.match(field, '^(%a):(%-?%d+):?(.*)$')
  slice = tonumber(slice)
  if slice == nil or slice < oldest then
    stale[#stale + 1] = field
  elseif kind == 'c' or currency == ARGV[2] then
    if not valid(value) then
      return redis.error_reply('velocity counter ' .. field .. ' is not an unsigned 64-bit integer')
    end
    if kind == 'c' then
      count = add(count, value)
      if slice == current then slice_count = value end
    else
      amount = add(amount, value)
      if slice == current then slice_amount = value end
    end
  end
end
local day_field = 'amt:' .. ARGV[2]
local day_amount = redis.call('HGET', KEYS[2], day_field) or '0'
if not valid(day_amount) or not valid(ARGV[1]) then
  return redis.error_reply('velocity counter is not an unsigned 64-bit integer')
end
if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
redis.call('HSET', KEYS[1], 'c:' .. ARGV[3], count_of(add(slice_count, '1')))
redis.call('HSET', KEYS[1], 'a:' .. ARGV[3] .. ':' .. ARGV[2], add(slice_amount, ARGV[1]))
redis.call('HSET', KEYS[2], day_field, add(day_amount, ARGV[1]))
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return {count_of(count), amount, day_amount}
";

/// Velocity counters in Redis, shared by every replica using the same Redis and prefix.
///
/// Keys: `{prefix}vel:{slice_s}:{customer}` (the customer's slices, see [`RECORD_LUA`];
/// expires two slices after its window ends; the slice length in the name keeps two window
/// sizes apart) and `{prefix}day:{customer}:{yyyymmdd}` (fields `amt:{currency}`; expires
/// two days after its last payment). Both keys of a payment are written by one script, so
/// it needs a single Redis, not a cluster.
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
        let slicing = Slicing::of(now_ms, window_s);
        let prefix = &self.key_prefix;
        let slices_ttl_s = (slicing.current - slicing.oldest + 2) * slicing.len_s;
        let mut invocation = self.script.key(format!("{prefix}vel:{}:{customer}", slicing.len_s));
        invocation
            .key(format!("{prefix}day:{customer}:{}", yyyymmdd(day_of(now_ms))))
            .arg(amount_minor.to_string())
            .arg(currency)
            .arg(slicing.current)
            .arg(slicing.oldest)
            .arg(slices_ttl_s)
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
    fn a_window_is_sixty_slices_that_cover_it() {
        // 10 minutes: 10 s slices, the current one and the 60 before it.
        let s = Slicing::of(1_709_287_205_000, 600);
        assert_eq!((s.len_s, s.current, s.oldest), (10, 170_928_720, 170_928_660));
        // 61 s: 2 s slices, 31 of them before the current one (62 s >= 61 s).
        let s = Slicing::of(0, 61);
        assert_eq!((s.len_s, s.current, s.oldest), (2, 0, -31));
        // 1 s (and 0, taken as 1): 1 s slices, the one before counts too.
        assert_eq!(Slicing::of(1_999, 1), Slicing { len_s: 1, current: 1, oldest: 0 });
        assert_eq!(Slicing::of(1_999, 0), Slicing::of(1_999, 1));
        // Before the epoch: floor, not truncation.
        assert_eq!(Slicing::of(-1, 60).current, -1);
        assert_eq!(day_of(-1), -1);
        assert_eq!(day_of(86_400_000), 1);
    }
}
