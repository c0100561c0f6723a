//! The event-bus conformance suite: every case runs against the in-process bus, against
//! RabbitMQ (`FERROBANK_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`) and
//! against a Kafka-protocol broker (`FERROBANK_TEST_KAFKA_URL`, default
//! `kafka://127.0.0.1:9092`). A broker that is not running fails the tests;
//! `scripts/test.sh` starts both (RabbitMQ, and tansu for Kafka). Each test uses its own
//! name prefix on the broker, so tests run in parallel, and deletes its exchange and queues
//! or topics when it ends (also when it fails).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrobank_adapters::bus::{
    KafkaBus, KafkaBusOptions, MemoryBus, MemoryBusOptions, RabbitBus, RabbitBusOptions,
};
use ferrobank_application::bus::{
    BusError, DeadLetter, DeadLetterReason, Delivery, Event, EventBus, MAX_EVENT_BYTES,
    RetryPolicy, Subscription,
};
use serde_json::json;
use uuid::Uuid;

/// Longest a test waits for something that should happen.
const DEADLINE: Duration = Duration::from_secs(15);
/// How long a test watches for something that should not happen.
const QUIET: Duration = Duration::from_millis(500);
/// Short backoffs so that retries come back within a test.
const RETRY: RetryPolicy =
    RetryPolicy { max_attempts: 3, initial_backoff_ms: 100, max_backoff_ms: 200 };
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    Rabbit,
    Kafka,
}

/// Generates one test per backend for each named `async fn(Backend)`: `name::memory`,
/// `name::rabbitmq` and `name::kafka`.
macro_rules! on_every_bus {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    super::$name(super::Backend::Memory).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn rabbitmq() {
                    super::$name(super::Backend::Rabbit).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn kafka() {
                    super::$name(super::Backend::Kafka).await;
                }
            }
        )*
    };
}

on_every_bus!(
    round_trip_keeps_every_cloudevents_attribute,
    events_of_one_subject_arrive_in_publish_order,
    a_published_batch_keeps_the_order_of_each_subject,
    a_retried_event_comes_back_with_the_next_attempt,
    a_poison_event_lands_in_the_dead_letter_queue,
    every_consumer_gets_every_event,
    an_unsettled_event_comes_back_when_its_subscription_drops,
    concurrent_publishes_are_each_delivered_once,
    prefetch_bounds_unsettled_deliveries,
    invalid_events_and_subscriptions_are_refused,
);

fn amqp_url() -> String {
    std::env::var("FERROBANK_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn kafka_url() -> String {
    std::env::var("FERROBANK_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

/// A Kafka bus under a prefix of its own, with short fetch waits.
async fn kafka_bus(options: KafkaBusOptions) -> KafkaBus {
    let url = kafka_url();
    KafkaBus::connect(&url, options).await.unwrap_or_else(|e| {
        panic!(
            "Kafka is not reachable at {url} ({e}). Start a broker (./scripts/test.sh starts \
             tansu) or point FERROBANK_TEST_KAFKA_URL at one."
        )
    })
}

fn kafka_options(prefetch: u16) -> KafkaBusOptions {
    KafkaBusOptions {
        topic_prefix: format!("test-{}", Uuid::new_v4().simple()),
        retry: RETRY,
        prefetch,
        partitions: 4,
        fetch_wait_ms: 100,
        ..Default::default()
    }
}

/// One test's bus: in memory, or on RabbitMQ or Kafka under a prefix of its own whose
/// exchange and queues, or topics, are deleted on drop.
struct Harness {
    bus: Arc<dyn EventBus>,
    rabbit: Option<(RabbitBus, RabbitBusOptions)>,
    kafka: Option<(KafkaBus, KafkaBusOptions)>,
}

impl Harness {
    async fn new(backend: Backend) -> Self {
        Self::with_prefetch(backend, 32).await
    }

    async fn with_prefetch(backend: Backend, prefetch: u16) -> Self {
        match backend {
            Backend::Memory => {
                let options = MemoryBusOptions { retry: RETRY, prefetch, ..Default::default() };
                Self { bus: Arc::new(MemoryBus::new(options).unwrap()), rabbit: None, kafka: None }
            }
            Backend::Rabbit => {
                let options = RabbitBusOptions {
                    prefix: format!("test-{}", Uuid::new_v4().simple()),
                    retry: RETRY,
                    prefetch,
                    ..Default::default()
                };
                let url = amqp_url();
                let bus = RabbitBus::connect(&url, options.clone()).await.unwrap_or_else(|e| {
                    panic!(
                        "RabbitMQ is not reachable at {url} ({e}). Start it (./scripts/test.sh \
                         does: rabbitmq-server -detached) or point FERROBANK_TEST_AMQP_URL at one."
                    )
                });
                Self { bus: Arc::new(bus.clone()), rabbit: Some((bus, options)), kafka: None }
            }
            Backend::Kafka => {
                let options = kafka_options(prefetch);
                let bus = kafka_bus(options.clone()).await;
                Self { bus: Arc::new(bus.clone()), rabbit: None, kafka: Some((bus, options)) }
            }
        }
    }

    async fn subscribe(&self, consumer: &str, types: &[&str]) -> Box<dyn Subscription> {
        self.bus.subscribe(consumer, types).await.unwrap()
    }

    async fn publish(&self, event: &Event) {
        self.bus.publish(event).await.unwrap();
    }

    /// Polls the consumer's dead-letter queue until it holds `count` letters.
    async fn dead_letters(&self, consumer: &str, count: usize) -> Vec<DeadLetter> {
        let start = Instant::now();
        loop {
            let letters = self.bus.dead_letters(consumer, 100).await.unwrap();
            if letters.len() >= count || start.elapsed() > DEADLINE {
                assert_eq!(letters.len(), count, "dead letters of {consumer}: {letters:?}");
                return letters;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some((bus, options)) = self.kafka.take() {
            let consumers = bus.declared_consumers();
            let cleanup = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(async {
                    let cleaner = KafkaBus::connect(&kafka_url(), options).await?;
                    for consumer in consumers {
                        cleaner.delete_consumer(&consumer).await?;
                    }
                    cleaner.teardown().await
                })?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            });
            if let Ok(Err(e)) = cleanup.join() {
                eprintln!("could not delete the test's Kafka topics: {e}");
            }
        }
        let Some((bus, options)) = self.rabbit.take() else { return };
        let consumers = bus.declared_consumers();
        // Drop cannot await, and the test's runtime may be shutting down: clean up from a
        // thread with a runtime and a connection of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let cleaner = RabbitBus::connect(&amqp_url(), options).await?;
                for consumer in consumers {
                    cleaner.delete_consumer(&consumer).await?;
                }
                cleaner.teardown().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("could not delete the test's RabbitMQ exchange and queues: {e}");
        }
    }
}

fn event(type_: &str, subject: &str, n: u64) -> Event {
    Event::new(
        Uuid::now_v7(),
        "/ferrobank/test",
        type_,
        subject,
        "2025-01-31T12:00:00.000Z",
        json!({ "n": n, "subject": subject }),
    )
    .with_traceparent(TRACEPARENT)
}

/// The next delivery, failing the test after [`DEADLINE`].
async fn next(subscription: &mut Box<dyn Subscription>) -> Delivery {
    match tokio::time::timeout(DEADLINE, subscription.next()).await {
        Ok(delivery) => delivery.unwrap(),
        Err(_) => panic!("no delivery within {DEADLINE:?}"),
    }
}

/// Asserts that nothing is delivered for [`QUIET`].
async fn nothing_more(subscription: &mut Box<dyn Subscription>) {
    if let Ok(delivery) = tokio::time::timeout(QUIET, subscription.next()).await {
        panic!("unexpected delivery: {:?}", delivery.map(|d| d.event().clone()));
    }
}

fn n_of(event: &Event) -> u64 {
    event.data["n"].as_u64().unwrap()
}

async fn round_trip_keeps_every_cloudevents_attribute(backend: Backend) {
    let h = Harness::new(backend).await;
    let mut audit = h.subscribe("audit", &["transfer.created"]).await;

    let created = event("transfer.created", "acct-1", 1);
    let posted = event("transfer.posted", "acct-1", 2);
    h.publish(&created).await;
    h.publish(&posted).await; // no consumer bound to it: published to nobody

    let delivery = next(&mut audit).await;
    assert_eq!(delivery.event(), &created);
    assert_eq!(delivery.event().traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(delivery.event().datacontenttype, "application/json");
    assert_eq!(delivery.attempt(), 1);
    assert!(!delivery.redelivered());
    delivery.ack().await.unwrap();
    nothing_more(&mut audit).await;
}

async fn events_of_one_subject_arrive_in_publish_order(backend: Backend) {
    let h = Harness::new(backend).await;
    let mut ledger = h.subscribe("ledger", &["transfer.created", "transfer.posted"]).await;
    let subjects = ["acct-a", "acct-b", "acct-c"];
    for n in 0..60 {
        let type_ = if n % 2 == 0 { "transfer.created" } else { "transfer.posted" };
        h.publish(&event(type_, subjects[(n % 3) as usize], n)).await;
    }
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..60 {
        let delivery = next(&mut ledger).await;
        seen.entry(delivery.event().subject.clone()).or_default().push(n_of(delivery.event()));
        delivery.ack().await.unwrap();
    }
    for subject in subjects {
        let ns = &seen[subject];
        assert_eq!(ns.len(), 20, "{subject}: {ns:?}");
        assert!(ns.is_sorted(), "{subject} out of order: {ns:?}");
    }
}

async fn a_published_batch_keeps_the_order_of_each_subject(backend: Backend) {
    const EVENTS: usize = 600;
    let h = Harness::new(backend).await;
    let mut ledger = h.subscribe("ledger", &["transfer.created", "transfer.posted"]).await;
    let subjects: Vec<String> = (0..7).map(|i| format!("acct-{i}")).collect();
    let events: Vec<Event> = (0..EVENTS as u64)
        .map(|n| {
            let type_ = if n % 2 == 0 { "transfer.created" } else { "transfer.posted" };
            event(type_, &subjects[(n * 5 % 7) as usize], n)
        })
        .collect();
    // Two batches, as two relay rounds would publish them.
    let (first, second) = events.split_at(250);
    for batch in [first, second] {
        let results = h.bus.publish_all(batch).await;
        assert_eq!(results.len(), batch.len());
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    assert!(h.bus.publish_all(&[]).await.is_empty());
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..EVENTS {
        let delivery = next(&mut ledger).await;
        seen.entry(delivery.event().subject.clone()).or_default().push(n_of(delivery.event()));
        delivery.ack().await.unwrap();
    }
    let total: usize = seen.values().map(Vec::len).sum();
    assert_eq!(total, EVENTS);
    for (subject, ns) in &seen {
        assert!(ns.is_sorted(), "{subject} out of order: {ns:?}");
    }
    nothing_more(&mut ledger).await;
}

async fn a_retried_event_comes_back_with_the_next_attempt(backend: Backend) {
    let h = Harness::new(backend).await;
    let mut worker = h.subscribe("worker", &["transaction.created"]).await;
    let created = event("transaction.created", "acct-1", 1);
    h.publish(&created).await;

    let first = next(&mut worker).await;
    assert_eq!(first.attempt(), 1);
    let retried_at = Instant::now();
    first.retry().await.unwrap();

    let second = next(&mut worker).await;
    assert_eq!(second.event(), &created);
    assert_eq!(second.attempt(), 2);
    assert!(!second.redelivered());
    let waited = retried_at.elapsed();
    assert!(waited >= Duration::from_millis(RETRY.backoff_ms(1)), "came back after {waited:?}");
    let retried_at = Instant::now();
    second.retry().await.unwrap();

    let third = next(&mut worker).await;
    assert_eq!((third.event(), third.attempt()), (&created, 3));
    let waited = retried_at.elapsed();
    assert!(waited >= Duration::from_millis(RETRY.backoff_ms(2)), "came back after {waited:?}");
    third.ack().await.unwrap();
    nothing_more(&mut worker).await;
    assert_eq!(h.bus.dead_letters("worker", 10).await.unwrap(), []);
}

async fn a_poison_event_lands_in_the_dead_letter_queue(backend: Backend) {
    let h = Harness::new(backend).await;
    let mut worker = h.subscribe("worker", &["transaction.created"]).await;
    let poison = event("transaction.created", "acct-1", 1);
    let good = event("transaction.created", "acct-2", 2);
    h.publish(&poison).await;
    h.publish(&good).await;

    // The poison fails every attempt; the good event, behind it, is not held up.
    let mut attempts = Vec::new();
    let mut good_done = false;
    while attempts.len() < RETRY.max_attempts as usize || !good_done {
        let delivery = next(&mut worker).await;
        if delivery.event() == &poison {
            attempts.push(delivery.attempt());
            delivery.retry().await.unwrap();
        } else {
            assert_eq!(delivery.event(), &good);
            good_done = true;
            delivery.ack().await.unwrap();
        }
    }
    assert_eq!(attempts, [1, 2, 3]);
    let letters = h.dead_letters("worker", 1).await;
    assert_eq!(
        letters,
        [DeadLetter {
            event: Some(poison.clone()),
            attempt: 3,
            reason: DeadLetterReason::MaxAttempts
        }]
    );

    // A rejected event goes there at once; reading the queue leaves it as it was.
    let hopeless = event("transaction.created", "acct-3", 3);
    h.publish(&hopeless).await;
    let delivery = next(&mut worker).await;
    assert_eq!(delivery.event(), &hopeless);
    delivery.reject().await.unwrap();
    let letters = h.dead_letters("worker", 2).await;
    let rejected =
        DeadLetter { event: Some(hopeless), attempt: 1, reason: DeadLetterReason::Rejected };
    assert_eq!(letters[1], rejected);
    assert_eq!(h.dead_letters("worker", 2).await, letters);
    assert_eq!(h.bus.dead_letters("worker", 1).await.unwrap(), letters[..1]);
    nothing_more(&mut worker).await;
    assert_eq!(h.bus.dead_letters("nobody", 10).await.unwrap(), []);
}

async fn every_consumer_gets_every_event(backend: Backend) {
    let h = Harness::new(backend).await;
    let mut notifications = h.subscribe("notifications", &["transaction.completed"]).await;
    let mut audit = h.subscribe("audit", &["transaction.completed", "transaction.failed"]).await;
    let mut published = BTreeSet::new();
    for n in 0..20 {
        let event = event("transaction.completed", &format!("acct-{n}"), n);
        published.insert(event.id.clone());
        h.publish(&event).await;
    }
    for subscription in [&mut notifications, &mut audit] {
        let mut received = BTreeSet::new();
        for _ in 0..20 {
            let delivery = next(subscription).await;
            received.insert(delivery.event().id.clone());
            delivery.ack().await.unwrap();
        }
        assert_eq!(received, published);
    }
    nothing_more(&mut notifications).await;
    nothing_more(&mut audit).await;
}

async fn an_unsettled_event_comes_back_when_its_subscription_drops(backend: Backend) {
    let h = Harness::new(backend).await;
    let mut worker = h.subscribe("worker", &["transaction.created"]).await;
    let created = event("transaction.created", "acct-1", 1);
    h.publish(&created).await;
    let crashed = next(&mut worker).await;
    assert_eq!(crashed.event(), &created);
    drop(worker); // the worker dies holding the delivery

    let mut restarted = h.subscribe("worker", &["transaction.created"]).await;
    let again = next(&mut restarted).await;
    assert_eq!(again.event(), &created);
    assert_eq!(again.attempt(), 1);
    assert!(again.redelivered());
    // The first delivery's subscription is gone: settling it now changes nothing.
    assert!(matches!(crashed.ack().await, Err(BusError::NotInFlight)));
    again.ack().await.unwrap();
    nothing_more(&mut restarted).await;
}

async fn concurrent_publishes_are_each_delivered_once(backend: Backend) {
    const PUBLISHERS: u64 = 8;
    const EACH: u64 = 50;
    let h = Harness::new(backend).await;
    let mut worker = h.subscribe("worker", &["transaction.created"]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..PUBLISHERS {
        let bus = h.bus.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                let event = event("transaction.created", &format!("acct-{p}"), i);
                bus.publish(&event).await.unwrap();
                ids.push(event.id);
            }
            ids
        });
    }
    let published: BTreeSet<String> = tasks.join_all().await.into_iter().flatten().collect();
    assert_eq!(published.len() as u64, PUBLISHERS * EACH);

    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    while counts.len() < published.len() {
        let delivery = next(&mut worker).await;
        *counts.entry(delivery.event().id.clone()).or_default() += 1;
        delivery.ack().await.unwrap();
    }
    nothing_more(&mut worker).await;
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), published);
    let duplicates: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(duplicates.is_empty(), "delivered more than once: {duplicates:?}");
}

async fn prefetch_bounds_unsettled_deliveries(backend: Backend) {
    let h = Harness::with_prefetch(backend, 2).await;
    let mut worker = h.subscribe("worker", &["transaction.created"]).await;
    assert_eq!(worker.prefetch(), 2);
    for n in 0..3 {
        h.publish(&event("transaction.created", "acct-1", n)).await;
    }
    let first = next(&mut worker).await;
    let second = next(&mut worker).await;
    assert_eq!((n_of(first.event()), n_of(second.event())), (0, 1));
    nothing_more(&mut worker).await; // two unsettled: the third waits
    first.ack().await.unwrap();
    let third = next(&mut worker).await;
    assert_eq!(n_of(third.event()), 2);
    second.ack().await.unwrap();
    third.ack().await.unwrap();
}

async fn invalid_events_and_subscriptions_are_refused(backend: Backend) {
    let h = Harness::new(backend).await;
    let mut worker = h.subscribe("worker", &["transaction.created"]).await;
    let bad_trace = event("transaction.created", "acct-1", 1).with_traceparent("00-abc-01");
    assert!(matches!(h.bus.publish(&bad_trace).await, Err(BusError::InvalidEvent(_))));
    let mut large = event("transaction.created", "acct-1", 2);
    large.data = json!({ "blob": "x".repeat(MAX_EVENT_BYTES) });
    assert!(matches!(h.bus.publish(&large).await, Err(BusError::TooLarge { .. })));
    for (consumer, types) in
        [("Worker", &["a"][..]), ("worker.dlq", &["a"]), ("w", &["a.#"]), ("w", &[])]
    {
        let refused = h.bus.subscribe(consumer, types).await;
        assert!(matches!(refused, Err(BusError::InvalidSubscription(_))), "{consumer} {types:?}");
    }
    nothing_more(&mut worker).await;
}

mod metrics_count_every_step {
    // A current-thread runtime: every metric is recorded on the thread of the test's
    // recorder.
    #[tokio::test]
    async fn memory() {
        super::metrics_count_every_step(super::Backend::Memory).await;
    }

    #[tokio::test]
    async fn rabbitmq() {
        super::metrics_count_every_step(super::Backend::Rabbit).await;
    }

    #[tokio::test]
    async fn kafka() {
        super::metrics_count_every_step(super::Backend::Kafka).await;
    }
}

/// Counters and gauges by `name{label=value,...}`, recorded on the current thread.
#[derive(Debug, Default, Clone)]
struct Recorded(Arc<std::sync::Mutex<BTreeMap<String, f64>>>);

struct Metric {
    key: String,
    values: Recorded,
}

impl Recorded {
    fn get(&self, key: &str) -> f64 {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0.0)
    }

    fn update(&self, key: &str, f: impl FnOnce(f64) -> f64) {
        let mut values = self.0.lock().unwrap();
        let value = values.entry(key.to_owned()).or_default();
        *value = f(*value);
    }

    fn metric(&self, key: &metrics::Key) -> Arc<Metric> {
        let mut labels: Vec<String> =
            key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        labels.sort();
        let key = format!("{}{{{}}}", key.name(), labels.join(","));
        Arc::new(Metric { key, values: self.clone() })
    }
}

// Metric values are f64 in the metrics API; no money here.
#[allow(clippy::cast_precision_loss, clippy::float_arithmetic)]
impl metrics::CounterFn for Metric {
    fn increment(&self, value: u64) {
        self.values.update(&self.key, |v| v + value as f64);
    }

    fn absolute(&self, value: u64) {
        self.values.update(&self.key, |_| value as f64);
    }
}

#[allow(clippy::float_arithmetic)]
impl metrics::GaugeFn for Metric {
    fn increment(&self, value: f64) {
        self.values.update(&self.key, |v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.values.update(&self.key, |v| v - value);
    }

    fn set(&self, value: f64) {
        self.values.update(&self.key, |_| value);
    }
}

impl metrics::Recorder for Recorded {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.metric(key))
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.metric(key))
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// What operators watch: published, delivered, acked, retried and dead-lettered counts
/// per consumer, and the depth of its dead-letter queue.
async fn metrics_count_every_step(backend: Backend) {
    let recorded = Recorded::default();
    let _recording = metrics::set_default_local_recorder(&recorded);
    let bus = match backend {
        Backend::Memory => "memory",
        Backend::Rabbit => "rabbitmq",
        Backend::Kafka => "kafka",
    };
    let h = Harness::new(backend).await;
    let mut worker = h.subscribe("worker", &["transaction.created"]).await;
    for n in 0..3 {
        h.publish(&event("transaction.created", "acct-1", n)).await;
    }
    next(&mut worker).await.ack().await.unwrap();
    next(&mut worker).await.retry().await.unwrap();
    next(&mut worker).await.reject().await.unwrap();
    let retried = next(&mut worker).await;
    assert_eq!(retried.attempt(), 2);
    retried.ack().await.unwrap();

    let consumer = format!("bus={bus},consumer=worker");
    let count = |name: &str| recorded.get(&format!("ferrobank_bus_{name}{{{consumer}}}"));
    assert_eq!(
        recorded
            .get(&format!("ferrobank_bus_published_total{{bus={bus},type=transaction.created}}")),
        3.0
    );
    assert_eq!(count("delivered_total"), 4.0);
    assert_eq!(count("acked_total"), 2.0);
    assert_eq!(count("retried_total"), 1.0);
    assert_eq!(
        recorded.get(&format!("ferrobank_bus_dead_lettered_total{{{consumer},reason=rejected}}")),
        1.0
    );
    assert_eq!(count("dead_letters"), 1.0);
}

/// The in-process bus is bounded: a publish that would overfill any consumer's queue is
/// refused for all of them.
#[tokio::test]
async fn memory_queue_bound_refuses_the_whole_publish() {
    let options = MemoryBusOptions { retry: RETRY, max_queue_len: 2, ..Default::default() };
    let bus = MemoryBus::new(options).unwrap();
    let mut slow = bus.subscribe("slow", &["transaction.created"]).await.unwrap();
    let mut fast = bus.subscribe("fast", &["transaction.created"]).await.unwrap();
    bus.publish(&event("transaction.created", "acct-1", 0)).await.unwrap();
    bus.publish(&event("transaction.created", "acct-1", 1)).await.unwrap();
    for _ in 0..2 {
        next(&mut fast).await.ack().await.unwrap();
    }
    let refused = bus.publish(&event("transaction.created", "acct-1", 2)).await;
    assert!(matches!(refused, Err(BusError::Full { consumer }) if consumer == "slow"));
    nothing_more(&mut fast).await;
    // In flight still counts against the bound; settled frees it.
    let held = next(&mut slow).await;
    assert!(bus.publish(&event("transaction.created", "acct-1", 3)).await.is_err());
    held.ack().await.unwrap();
    bus.publish(&event("transaction.created", "acct-1", 4)).await.unwrap();
    assert_eq!(n_of(next(&mut fast).await.event()), 4);
}

/// A TCP proxy between the bus and RabbitMQ that the test can cut (every connection
/// dropped, as when the broker goes away) and refuse new connections through.
struct Proxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let accept = tokio::spawn({
            let (up, connections) = (up.clone(), connections.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(std::sync::atomic::Ordering::SeqCst) {
                        continue; // dropped: the connection is refused
                    }
                    let upstream = upstream.clone();
                    connections.lock().unwrap().spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }
        });
        Self { port, up, connections, accept }
    }

    /// Drops every connection and refuses new ones.
    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.connections.lock().unwrap().abort_all();
    }

    fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections.lock().unwrap().abort_all();
    }
}

/// RabbitMQ goes away and comes back: publishing fails while it is gone and works again
/// after, subscriptions end and are taken up again, and the event a consumer held unsettled
/// when the connection broke is delivered again. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_connection_loss_loses_nothing() {
    let direct = url::Url::parse(&amqp_url()).unwrap();
    let upstream =
        format!("{}:{}", direct.host_str().unwrap(), direct.port_or_known_default().unwrap());
    let proxy = Proxy::start(upstream).await;
    let mut through_proxy = direct.clone();
    through_proxy.set_port(Some(proxy.port)).unwrap();
    let h = Harness::new(Backend::Rabbit).await; // owns (and deletes) the topology
    let (_, options) = h.rabbit.clone().unwrap();
    let options = RabbitBusOptions { connect_timeout_ms: 1_000, ..options };
    let bus = RabbitBus::connect(through_proxy.as_str(), options).await.unwrap();

    let mut worker = bus.subscribe("worker", &["transaction.created"]).await.unwrap();
    let held = event("transaction.created", "acct-1", 1);
    bus.publish(&held).await.unwrap();
    let unsettled = next(&mut worker).await;
    assert_eq!(unsettled.event(), &held);

    proxy.down();
    let ended = tokio::time::timeout(DEADLINE, worker.next()).await.unwrap();
    assert!(matches!(ended, Err(BusError::Unavailable(_))), "{ended:?}");
    let refused = bus.publish(&event("transaction.created", "acct-1", 2)).await;
    assert!(matches!(refused, Err(BusError::Unavailable(_))), "{refused:?}");
    assert!(unsettled.ack().await.is_err());

    proxy.up();
    let after = event("transaction.created", "acct-1", 3);
    bus.publish(&after).await.unwrap();
    let mut worker = bus.subscribe("worker", &["transaction.created"]).await.unwrap();
    let again = next(&mut worker).await;
    assert_eq!(again.event(), &held);
    assert!(again.redelivered());
    again.ack().await.unwrap();
    let delivery = next(&mut worker).await;
    assert_eq!(delivery.event(), &after);
    delivery.ack().await.unwrap();
    nothing_more(&mut worker).await;
    drop(worker);
    bus.teardown().await.unwrap();
}

/// Kafka commits a partition's offset only past deliveries that are all settled: a later
/// event acked while an earlier one of the same subject is held does not move the offset,
/// so both come back to the next subscription when the first one ends unsettled; once
/// both are acked, nothing comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_commits_offsets_in_order() {
    let h = Harness::new(Backend::Kafka).await;
    let mut worker = h.subscribe("worker", &["transaction.created"]).await;
    let (first, second) =
        (event("transaction.created", "acct-1", 1), event("transaction.created", "acct-1", 2));
    h.publish(&first).await;
    h.publish(&second).await;
    let held = next(&mut worker).await;
    assert_eq!(held.event(), &first);
    let done = next(&mut worker).await;
    assert_eq!(done.event(), &second);
    done.ack().await.unwrap();
    drop(worker);
    assert!(matches!(held.ack().await, Err(BusError::NotInFlight)));

    let mut restarted = h.subscribe("worker", &["transaction.created"]).await;
    for expected in [&first, &second] {
        let again = next(&mut restarted).await;
        assert_eq!(again.event(), expected);
        assert!(again.redelivered());
        again.ack().await.unwrap();
    }
    nothing_more(&mut restarted).await;
    drop(restarted);

    // Another bus (another process) picks up the group's offsets from the broker.
    let (_, options) = h.kafka.clone().unwrap();
    let other = kafka_bus(options).await;
    let mut elsewhere = other.subscribe("worker", &["transaction.created"]).await.unwrap();
    nothing_more(&mut elsewhere).await;
    let third = event("transaction.created", "acct-1", 3);
    h.publish(&third).await;
    let delivery = next(&mut elsewhere).await;
    assert_eq!((delivery.event(), delivery.redelivered()), (&third, false));
    delivery.ack().await.unwrap();

    // A new consumer's group starts at the end: earlier events are not kept for it.
    let mut late = h.subscribe("late", &["transaction.created"]).await;
    nothing_more(&mut late).await;
}

/// Polls both subscriptions until `count` deliveries arrived, acking each; returns, per
/// subscription, the events in the order they came.
async fn from_either(
    a: &mut Box<dyn Subscription>,
    b: &mut Box<dyn Subscription>,
    count: usize,
) -> [Vec<Event>; 2] {
    let mut seen: [Vec<Event>; 2] = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + DEADLINE * 2;
    while seen[0].len() + seen[1].len() < count {
        let (which, delivery) = tokio::select! {
            delivery = a.next() => (0, delivery.unwrap()),
            delivery = b.next() => (1, delivery.unwrap()),
            () = tokio::time::sleep_until(deadline.into()) => {
                panic!("only {} of {count} deliveries", seen[0].len() + seen[1].len())
            }
        };
        seen[which].push(delivery.event().clone());
        delivery.ack().await.unwrap();
    }
    seen
}

/// Kafka: the subscriptions of one consumer are members of its consumer group. Two of them
/// split the partitions: together they see every event once, each subject at only one of
/// them and in order. When one leaves, the other takes over its partitions and gets the
/// event it left unsettled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_group_members_share_the_partitions() {
    const SUBJECTS: u64 = 32;
    let h = Harness::new(Backend::Kafka).await;
    let mut a = h.subscribe("worker", &["transaction.created"]).await;
    let mut b = h.subscribe("worker", &["transaction.created"]).await;
    let mut published = BTreeSet::new();
    for n in 0..SUBJECTS * 2 {
        let event = event("transaction.created", &format!("acct-{}", n % SUBJECTS), n);
        published.insert(event.id.clone());
        h.publish(&event).await;
    }
    let seen = from_either(&mut a, &mut b, published.len()).await;
    let ids: Vec<&String> = seen.iter().flatten().map(|e| &e.id).collect();
    assert_eq!(ids.len(), published.len(), "an event came twice");
    assert_eq!(ids.into_iter().cloned().collect::<BTreeSet<_>>(), published);
    let subjects = |events: &[Event]| -> BTreeSet<String> {
        events.iter().map(|e| e.subject.clone()).collect()
    };
    assert!(!seen[0].is_empty() && !seen[1].is_empty(), "one member got nothing");
    assert!(subjects(&seen[0]).is_disjoint(&subjects(&seen[1])), "a subject at both members");
    for events in &seen {
        for subject in subjects(events) {
            let ns: Vec<u64> = events.iter().filter(|e| e.subject == subject).map(n_of).collect();
            assert!(ns.is_sorted(), "{subject} out of order: {ns:?}");
        }
    }
    nothing_more(&mut a).await;
    nothing_more(&mut b).await;

    // b takes one event, leaves it unsettled and goes: a gets it again, and the rest.
    let mut later = BTreeSet::new();
    for n in 0..SUBJECTS {
        let event = event("transaction.created", &format!("acct-{n}"), 100 + n);
        later.insert(event.id.clone());
        h.publish(&event).await;
    }
    let held = next(&mut b).await;
    drop(b);
    let mut again = BTreeSet::new();
    let mut redelivered = false;
    while again.len() < later.len() {
        let delivery = next(&mut a).await;
        if delivery.event().id == held.event().id {
            redelivered = delivery.redelivered();
        }
        again.insert(delivery.event().id.clone());
        delivery.ack().await.unwrap();
    }
    assert_eq!(again, later);
    assert!(redelivered, "the held event came back without `redelivered`");
    assert!(matches!(held.ack().await, Err(BusError::NotInFlight)));
    nothing_more(&mut a).await;
}

/// The broker URL names one or more brokers; anything else is refused before connecting.
#[tokio::test]
async fn kafka_refuses_bad_urls_and_options() {
    for url in ["amqp://127.0.0.1:9092", "kafka://", "kafka://host-without-port"] {
        let refused = KafkaBus::connect(url, KafkaBusOptions::default()).await;
        assert!(matches!(refused, Err(BusError::InvalidOptions(_))), "{url}: {refused:?}");
    }
    for options in [
        KafkaBusOptions { topic_prefix: "Bad.Prefix".into(), ..Default::default() },
        KafkaBusOptions { prefetch: 0, ..Default::default() },
        KafkaBusOptions { partitions: 0, ..Default::default() },
    ] {
        let refused = KafkaBus::connect(&kafka_url(), options).await;
        assert!(matches!(refused, Err(BusError::InvalidOptions(_))), "{refused:?}");
    }
}
