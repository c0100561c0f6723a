//! The rate-limiter conformance suite: every case runs against the in-memory limiter and
//! against Redis (`FERROBANK_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`; a Redis that
//! is not running fails the tests, `scripts/test.sh` starts one). Each test uses its own key
//! prefix, so tests run in parallel, and deletes its keys when it ends.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrobank_adapters::rate_limit::{MemoryRateLimiter, RedisLimiterOptions, RedisRateLimiter};
use ferrobank_application::rate_limit::MAX_KEY_BYTES;
use ferrobank_application::{RateDecision, RateLimitError, RateLimiter, TokenBucket};
use uuid::Uuid;

/// Longest a test waits for a refill.
const DEADLINE: Duration = Duration::from_secs(10);
/// A fill interval no test outlives: refill cannot interfere with counting.
const HOUR_MS: u64 = 3_600_000;

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
    exactly_max_tokens_are_admitted_under_concurrency,
    decisions_count_down_and_tell_when_to_retry,
    tokens_come_back_after_the_emission_interval,
    keys_are_independent,
    keys_out_of_bounds_are_refused,
);

fn redis_url() -> String {
    std::env::var("FERROBANK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One test's limiters: a memory limiter, or Redis connections under a key prefix of its own
/// whose keys are deleted on drop (also when the test fails).
struct Harness {
    store: Store,
    prefix: String,
    memory: Arc<MemoryRateLimiter>,
}

impl Harness {
    fn new(store: Store) -> Self {
        Self {
            store,
            prefix: format!("ferrobank-test:{}:", Uuid::new_v4().simple()),
            memory: Arc::new(MemoryRateLimiter::new(10_000)),
        }
    }

    /// `n` handles onto one shared limit: the same memory limiter, or `n` Redis connections
    /// (as `n` replicas of a gateway would have).
    async fn replicas(&self, n: usize) -> Vec<Arc<dyn RateLimiter>> {
        let mut limiters: Vec<Arc<dyn RateLimiter>> = Vec::with_capacity(n);
        for _ in 0..n {
            limiters.push(match self.store {
                Store::Memory => self.memory.clone(),
                Store::Redis => Arc::new(self.redis().await),
            });
        }
        limiters
    }

    async fn limiter(&self) -> Arc<dyn RateLimiter> {
        self.replicas(1).await.remove(0)
    }

    async fn redis(&self) -> RedisRateLimiter {
        let url = redis_url();
        let options = RedisLimiterOptions {
            key_prefix: self.prefix.clone(),
            check_timeout_ms: 5_000,
            ..RedisLimiterOptions::default()
        };
        RedisRateLimiter::connect(&url, options).await.unwrap_or_else(|e| {
            panic!(
                "Redis is not reachable at {url} ({e}). Start it (./scripts/test.sh does: \
                 redis-server --daemonize yes --port 6379 ...) or point \
                 FERROBANK_TEST_REDIS_URL at one."
            )
        })
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

fn bucket(max_tokens: u32, tokens_per_fill: u32, fill_interval_ms: u64) -> TokenBucket {
    TokenBucket::new(max_tokens, tokens_per_fill, fill_interval_ms).unwrap()
}

async fn check(limiter: &dyn RateLimiter, key: &str, bucket: &TokenBucket) -> RateDecision {
    limiter.check(key, bucket).await.unwrap()
}

async fn exactly_max_tokens_are_admitted_under_concurrency(store: Store) {
    let harness = Harness::new(store);
    let limiters = harness.replicas(4).await;
    let bucket = bucket(50, 1, HOUR_MS);
    let key = "route:/api/payments|azp:banking-web-app";
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let limiter = limiters[i % limiters.len()].clone();
            tokio::spawn(async move { limiter.check(key, &bucket).await.unwrap() })
        })
        .collect();
    let mut decisions = Vec::new();
    for task in tasks {
        decisions.push(task.await.unwrap());
    }
    let admitted: Vec<_> = decisions.iter().filter(|d| d.allowed).collect();
    assert_eq!(admitted.len(), 50, "admitted {} of 300", admitted.len());
    // Each token was handed out once: the admitted requests saw 49, 48, ..., 0 remaining.
    let mut remaining: Vec<u32> = admitted.iter().map(|d| d.remaining).collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..50).collect::<Vec<_>>());
    assert!(decisions.iter().filter(|d| !d.allowed).all(|d| d.remaining == 0));
}

async fn decisions_count_down_and_tell_when_to_retry(store: Store) {
    let harness = Harness::new(store);
    let limiter = harness.limiter().await;
    // Envoy: max_tokens 5, tokens_per_fill 5, fill_interval 1 h: one token per 12 minutes.
    let bucket = bucket(5, 5, HOUR_MS);
    let key = "azp:banking-web-app";
    for expected in (0..5).rev() {
        let decision = check(&*limiter, key, &bucket).await;
        assert!(decision.allowed);
        assert_eq!((decision.limit, decision.remaining, decision.retry_after_ms), (5, expected, 0));
        assert!(decision.reset_after_ms > 0 && decision.reset_after_ms <= HOUR_MS);
    }
    let refused = check(&*limiter, key, &bucket).await;
    assert!(!refused.allowed);
    assert_eq!((refused.limit, refused.remaining), (5, 0));
    assert!(refused.retry_after_ms > 0 && refused.retry_after_ms <= 12 * 60_000, "{refused:?}");
    assert!(refused.retry_after_secs() > 0);
    assert!(refused.reset_after_ms > 48 * 60_000 && refused.reset_after_ms <= HOUR_MS);
    // A refusal takes nothing: the next one is told the same.
    let again = check(&*limiter, key, &bucket).await;
    assert!(!again.allowed);
    assert!(again.retry_after_ms <= refused.retry_after_ms);
}

async fn tokens_come_back_after_the_emission_interval(store: Store) {
    let harness = Harness::new(store);
    let limiter = harness.limiter().await;
    // Two tokens, both back every 300 ms: one per 150 ms.
    let bucket = bucket(2, 2, 300);
    let key = "10.1.2.3";
    assert!(check(&*limiter, key, &bucket).await.allowed);
    assert!(check(&*limiter, key, &bucket).await.allowed);
    let asked = Instant::now();
    let refused = check(&*limiter, key, &bucket).await;
    assert!(!refused.allowed);
    assert!(refused.retry_after_ms > 0 && refused.retry_after_ms <= 150, "{refused:?}");
    let deadline = asked + DEADLINE;
    let admitted = loop {
        let decision = check(&*limiter, key, &bucket).await;
        if decision.allowed {
            break decision;
        }
        assert!(Instant::now() < deadline, "no token came back within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Not before the time the refusal announced (1 ms for rounding, 5 for the clocks).
    let waited_ms = u64::try_from(asked.elapsed().as_millis()).unwrap();
    assert!(waited_ms + 6 >= refused.retry_after_ms, "{waited_ms} ms < {refused:?}");
    assert_eq!(admitted.remaining, 0, "one token came back, and was taken");
}

async fn keys_are_independent(store: Store) {
    let harness = Harness::new(store);
    let limiter = harness.limiter().await;
    let bucket = bucket(3, 1, HOUR_MS);
    for _ in 0..3 {
        assert!(check(&*limiter, "route:/api/payments|azp:a", &bucket).await.allowed);
    }
    assert!(!check(&*limiter, "route:/api/payments|azp:a", &bucket).await.allowed);
    let other = check(&*limiter, "route:/api/payments|azp:b", &bucket).await;
    assert!(other.allowed);
    assert_eq!(other.remaining, 2);
    let other_route = check(&*limiter, "route:/api/accounts|azp:a", &bucket).await;
    assert_eq!((other_route.allowed, other_route.remaining), (true, 2));
}

async fn keys_out_of_bounds_are_refused(store: Store) {
    let harness = Harness::new(store);
    let limiter = harness.limiter().await;
    let bucket = bucket(3, 1, HOUR_MS);
    for key in [String::new(), "k".repeat(MAX_KEY_BYTES + 1)] {
        assert_eq!(limiter.check(&key, &bucket).await, Err(RateLimitError::InvalidKey));
    }
    assert!(check(&*limiter, &"k".repeat(MAX_KEY_BYTES), &bucket).await.allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replicas_share_one_limit() {
    let harness = Harness::new(Store::Redis);
    let (first, second) = (harness.redis().await, harness.redis().await);
    let bucket = bucket(4, 1, HOUR_MS);
    let key = "route:/api/payments|azp:banking-web-app";
    for _ in 0..2 {
        assert!(check(&first, key, &bucket).await.allowed);
        assert!(check(&second, key, &bucket).await.allowed);
    }
    assert!(!check(&first, key, &bucket).await.allowed);
    assert!(!check(&second, key, &bucket).await.allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_carry_the_prefix_and_vanish_once_the_bucket_is_full() {
    let harness = Harness::new(Store::Redis);
    let limiter = harness.redis().await;
    let bucket = bucket(2, 1, 200);
    assert!(check(&limiter, "client", &bucket).await.allowed);
    assert_eq!(harness.redis_keys(), [format!("{}client", harness.prefix)]);
    let deadline = Instant::now() + DEADLINE;
    while !harness.redis_keys().is_empty() {
        assert!(Instant::now() < deadline, "the key outlived its bucket's refill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Gone means full: the whole burst is there again.
    assert_eq!(check(&limiter, "client", &bucket).await.remaining, 1);
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_decision() {
    // Nothing listens on port 1.
    let started = Instant::now();
    let error = RedisRateLimiter::connect("redis://127.0.0.1:1", RedisLimiterOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(error, RateLimitError::Unavailable(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn memory_stays_bounded_and_a_key_flood_does_not_refill_a_drained_bucket() {
    let limiter = MemoryRateLimiter::new(64);
    let bucket = bucket(3, 1, HOUR_MS);
    for _ in 0..3 {
        assert!(check(&limiter, "drained", &bucket).await.allowed);
    }
    for i in 0..10_000 {
        assert!(check(&limiter, &format!("flood-{i}"), &bucket).await.allowed);
        assert!(limiter.tracked_keys() <= 64);
    }
    // The flood's buckets are the fuller ones: they went, the drained one stayed.
    assert!(!check(&limiter, "drained", &bucket).await.allowed);
}

/// A TCP proxy to Redis that the test can cut and restore, on a fixed local port.
struct Proxy {
    port: u16,
    tasks: tokio::task::JoinSet<()>,
}

impl Proxy {
    async fn start(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let redis =
            match redis::Client::open(redis_url()).unwrap().get_connection_info().addr.clone() {
                redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
                other => panic!("the proxy test needs Redis over TCP, not {other:?}"),
            };
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let redis = redis.clone();
                connections.spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(redis).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Self { port, tasks }
    }

    /// Closes the listener and every proxied connection.
    async fn cut(mut self) -> u16 {
        self.tasks.shutdown().await;
        self.port
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_an_error_within_the_timeout_and_the_limiter_reconnects() {
    let harness = Harness::new(Store::Redis);
    let proxy = Proxy::start(0).await;
    let options = RedisLimiterOptions {
        key_prefix: harness.prefix.clone(),
        check_timeout_ms: 500,
        ..RedisLimiterOptions::default()
    };
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let limiter = RedisRateLimiter::connect(&url, options).await.unwrap();
    let bucket = bucket(10, 1, HOUR_MS);
    assert_eq!(check(&limiter, "client", &bucket).await.remaining, 9);

    let port = proxy.cut().await;
    let started = Instant::now();
    let error = limiter.check("client", &bucket).await.unwrap_err();
    assert!(matches!(error, RateLimitError::Unavailable(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());

    let _proxy = Proxy::start(port).await;
    let deadline = Instant::now() + DEADLINE;
    let decision = loop {
        match limiter.check("client", &bucket).await {
            Ok(decision) => break decision,
            Err(e) => {
                assert!(Instant::now() < deadline, "no reconnection within {DEADLINE:?}: {e}")
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(decision.remaining, 8, "the state survived in Redis");
}
