//! The velocity-store conformance suite: every case runs against the in-memory counters
//! and against Redis (`FERROBANK_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`; a Redis
//! that is not running fails the tests, `scripts/test.sh` starts one). Each test uses its
//! own key prefix, so tests run in parallel, and deletes its keys when it ends.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use ferrobank_adapters::velocity::{MemoryVelocity, RedisVelocity};
use ferrobank_application::ports::StoreError;
use ferrobank_application::velocity::{VelocityBefore, VelocityStore};
use uuid::Uuid;

/// 2024-03-01T10:00:00Z, the start of a 10-minute window.
const T0_MS: i64 = 1_709_287_200_000;
const WINDOW_S: u32 = 600;
const MINUTE_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy)]
enum Store {
    Memory,
    Redis,
}

/// Generates one test per store for each named `async fn(Store)`: `name::memory` and
/// `name::redis`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    super::$name(super::Store::Memory).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    super::$name(super::Store::Redis).await;
                }
            }
        )*
    };
}

on_both_stores!(
    the_first_payment_sees_zeros,
    totals_accumulate_per_currency,
    the_count_spans_currencies,
    the_window_slides_and_the_day_stays,
    a_new_utc_day_resets_the_day_total,
    customers_are_independent,
    concurrent_payments_each_see_a_distinct_count,
    amounts_saturate_at_u64_max,
);

fn redis_url() -> String {
    std::env::var("FERROBANK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One test's store: memory, or Redis under a key prefix of its own whose keys are deleted
/// on drop (also when the test fails).
struct Harness {
    store: Store,
    prefix: String,
}

impl Harness {
    fn new(store: Store) -> Self {
        Self { store, prefix: format!("ferrobank-test:{}:", Uuid::new_v4().simple()) }
    }

    async fn velocity(&self) -> Arc<dyn VelocityStore> {
        match self.store {
            Store::Memory => Arc::new(MemoryVelocity::new(1_000)),
            Store::Redis => {
                let url = redis_url();
                let redis = RedisVelocity::connect(&url, &self.prefix).await.unwrap_or_else(|e| {
                    panic!(
                        "Redis is not reachable at {url} ({e}). Start it (./scripts/test.sh does: \
                         redis-server --daemonize yes --port 6379 ...) or point \
                         FERROBANK_TEST_REDIS_URL at one."
                    )
                });
                Arc::new(redis)
            }
        }
    }

    /// The keys this test left in Redis.
    fn redis_keys(&self) -> Vec<String> {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut connection = client.get_connection().unwrap();
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1_000)
                .query(&mut connection)
                .unwrap();
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if !matches!(self.store, Store::Redis) {
            return;
        }
        let Ok(client) = redis::Client::open(redis_url()) else { return };
        let Ok(mut connection) = client.get_connection() else { return };
        for key in self.redis_keys() {
            let _: Result<(), _> = redis::cmd("DEL").arg(key).query(&mut connection);
        }
    }
}

async fn record(
    store: &dyn VelocityStore,
    customer: &str,
    currency: &str,
    amount_minor: u64,
    now_ms: i64,
) -> VelocityBefore {
    store.record(customer, currency, amount_minor, now_ms, WINDOW_S).await.unwrap()
}

fn before(count: u32, window: u64, today: u64) -> VelocityBefore {
    VelocityBefore {
        count_in_window: count,
        amount_in_window_minor: window,
        amount_today_minor: today,
    }
}

async fn the_first_payment_sees_zeros(store: Store) {
    let harness = Harness::new(store);
    let velocity = harness.velocity().await;
    assert_eq!(record(&*velocity, "cust-1", "EUR", 1_250, T0_MS).await, VelocityBefore::default());
}

async fn totals_accumulate_per_currency(store: Store) {
    let harness = Harness::new(store);
    let velocity = harness.velocity().await;
    let v = &*velocity;
    assert_eq!(record(v, "cust-1", "EUR", 1_000, T0_MS).await, before(0, 0, 0));
    assert_eq!(record(v, "cust-1", "EUR", 250, T0_MS + MINUTE_MS).await, before(1, 1_000, 1_000));
    assert_eq!(record(v, "cust-1", "EUR", 5, T0_MS + 2 * MINUTE_MS).await, before(2, 1_250, 1_250));
    assert_eq!(record(v, "cust-1", "EUR", 1, T0_MS + 3 * MINUTE_MS).await, before(3, 1_255, 1_255));
}

async fn the_count_spans_currencies(store: Store) {
    let harness = Harness::new(store);
    let velocity = harness.velocity().await;
    let v = &*velocity;
    record(v, "cust-1", "EUR", 1_000, T0_MS).await;
    record(v, "cust-1", "USD", 700, T0_MS + 1).await;
    // Two payments before it, but none yet in CHF; EUR and USD keep their own totals.
    assert_eq!(record(v, "cust-1", "CHF", 10, T0_MS + 2).await, before(2, 0, 0));
    assert_eq!(record(v, "cust-1", "USD", 1, T0_MS + 3).await, before(3, 700, 700));
    assert_eq!(record(v, "cust-1", "EUR", 1, T0_MS + 4).await, before(4, 1_000, 1_000));
}

async fn the_window_slides_and_the_day_stays(store: Store) {
    let harness = Harness::new(store);
    let velocity = harness.velocity().await;
    let v = &*velocity;
    let window_ms = i64::from(WINDOW_S) * 1_000;
    assert_eq!(record(v, "cust-1", "EUR", 1_000, T0_MS).await, before(0, 0, 0));
    assert_eq!(
        record(v, "cust-1", "EUR", 500, T0_MS + window_ms - 1).await,
        before(1, 1_000, 1_000)
    );
    // Where a fixed window would have started again, both still count.
    assert_eq!(record(v, "cust-1", "EUR", 200, T0_MS + window_ms).await, before(2, 1_500, 1_500));
    // The first drops out with its 10 s slice: it counted for 600 to 610 s.
    let last_counted = T0_MS + window_ms + 9_999;
    assert_eq!(record(v, "cust-1", "EUR", 1, last_counted).await, before(3, 1_700, 1_700));
    assert_eq!(record(v, "cust-1", "EUR", 1, last_counted + 1).await, before(3, 701, 1_701));
    // A window after the last payment nothing counts; the day keeps its total.
    assert_eq!(record(v, "cust-1", "EUR", 1, T0_MS + 3 * window_ms).await, before(0, 0, 1_702));
    if let Store::Redis = store {
        // The slices no longer counted were deleted: only the current one is left.
        let client = redis::Client::open(redis_url()).unwrap();
        let mut connection = client.get_connection().unwrap();
        let key = format!("{}vel:10:cust-1", harness.prefix);
        let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query(&mut connection).unwrap();
        let slice = (T0_MS + 3 * window_ms) / 10_000;
        let mut fields = fields;
        fields.sort();
        assert_eq!(fields, [format!("a:{slice}:EUR"), format!("c:{slice}")]);
    }
}

async fn a_new_utc_day_resets_the_day_total(store: Store) {
    let harness = Harness::new(store);
    let velocity = harness.velocity().await;
    let v = &*velocity;
    // 23:59:59.999 UTC on 2024-02-29 (a leap day), then midnight.
    let midnight_ms = 1_709_251_200_000;
    assert_eq!(record(v, "cust-1", "EUR", 3_000, midnight_ms - 1).await, before(0, 0, 0));
    // The window slides over midnight; the day starts again.
    assert_eq!(record(v, "cust-1", "EUR", 40, midnight_ms).await, before(1, 3_000, 0));
    assert_eq!(record(v, "cust-1", "EUR", 2, midnight_ms + MINUTE_MS).await, before(2, 3_040, 40));
}

async fn customers_are_independent(store: Store) {
    let harness = Harness::new(store);
    let velocity = harness.velocity().await;
    let v = &*velocity;
    record(v, "cust-1", "EUR", 1_000, T0_MS).await;
    // A customer id that extends another's must not share its keys.
    assert_eq!(record(v, "cust-10", "EUR", 5, T0_MS).await, before(0, 0, 0));
    assert_eq!(record(v, "cust-1", "EUR", 5, T0_MS).await, before(1, 1_000, 1_000));
}

async fn concurrent_payments_each_see_a_distinct_count(store: Store) {
    let harness = Harness::new(store);
    // Several handles onto the same counters, as several replicas would have.
    let handles = match store {
        Store::Memory => vec![harness.velocity().await],
        Store::Redis => {
            let mut handles = Vec::new();
            for _ in 0..4 {
                handles.push(harness.velocity().await);
            }
            handles
        }
    };
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let velocity = handles[i % handles.len()].clone();
            tokio::spawn(async move {
                velocity.record("cust-1", "EUR", 100, T0_MS + 1_000, WINDOW_S).await.unwrap()
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    let mut counts: Vec<u32> = seen.iter().map(|b| b.count_in_window).collect();
    counts.sort_unstable();
    assert_eq!(counts, (0..50).collect::<Vec<_>>());
    // The amounts moved in lockstep with the counts: nobody read a stale total.
    assert!(seen.iter().all(|b| b.amount_in_window_minor == u64::from(b.count_in_window) * 100));
    assert!(seen.iter().all(|b| b.amount_today_minor == b.amount_in_window_minor));
    let last = handles[0].record("cust-1", "EUR", 0, T0_MS + 2_000, WINDOW_S).await.unwrap();
    assert_eq!(last, before(50, 5_000, 5_000));
}

async fn amounts_saturate_at_u64_max(store: Store) {
    let harness = Harness::new(store);
    let velocity = harness.velocity().await;
    let v = &*velocity;
    // Far above 2^53, where doubles lose units: the totals must stay exact.
    let big = u64::MAX - 10;
    assert_eq!(record(v, "cust-1", "EUR", big, T0_MS).await, before(0, 0, 0));
    assert_eq!(record(v, "cust-1", "EUR", 3, T0_MS + 1).await, before(1, big, big));
    assert_eq!(record(v, "cust-1", "EUR", 1_000, T0_MS + 2).await, before(2, big + 3, big + 3));
    assert_eq!(
        record(v, "cust-1", "EUR", u64::MAX, T0_MS + 3).await,
        before(3, u64::MAX, u64::MAX)
    );
    assert_eq!(record(v, "cust-1", "EUR", 1, T0_MS + 4).await, before(4, u64::MAX, u64::MAX));
    // Exact just above 2^53 too: 2^53 + 1 is the first integer a double cannot hold.
    let odd = (1u64 << 53) + 1;
    record(v, "cust-2", "USD", odd, T0_MS).await;
    assert_eq!(record(v, "cust-2", "USD", 2, T0_MS + 1).await, before(1, odd, odd));
    assert_eq!(record(v, "cust-2", "USD", 0, T0_MS + 2).await, before(2, odd + 2, odd + 2));
}

/// Memory only: the map forgets expired customers before it refuses a new one, and refuses
/// rather than forgetting live counters.
#[tokio::test]
async fn memory_counters_stay_bounded() {
    let velocity = MemoryVelocity::new(2);
    record(&velocity, "cust-1", "EUR", 1, T0_MS).await;
    record(&velocity, "cust-2", "EUR", 1, T0_MS).await;
    let full = velocity.record("cust-3", "EUR", 1, T0_MS, WINDOW_S).await;
    assert!(matches!(full, Err(StoreError::Unavailable(_))), "{full:?}");
    // Known customers still count while the map is full.
    assert_eq!(record(&velocity, "cust-1", "EUR", 1, T0_MS + 1).await, before(1, 1, 1));
    // Two days later every bucket has expired: the new customer takes their place.
    let later_ms = T0_MS + 2 * 86_400_000;
    assert_eq!(record(&velocity, "cust-3", "EUR", 1, later_ms).await, before(0, 0, 0));
    assert_eq!(velocity.tracked_customers(), 1);
}

/// Memory only: one customer's old slices and days are dropped as time moves on.
#[tokio::test]
async fn memory_prunes_a_customers_old_buckets() {
    let velocity = MemoryVelocity::new(10);
    for day in 0..30 {
        // Two windows apart: none sees the one before.
        for window in 0..20 {
            let now_ms = T0_MS + day * 86_400_000 + window * 2 * i64::from(WINDOW_S) * 1_000;
            let seen = record(&velocity, "cust-1", "EUR", 1, now_ms).await;
            assert_eq!(seen, before(0, 0, u64::try_from(window).unwrap()));
        }
    }
    assert_eq!(velocity.tracked_customers(), 1);
}
