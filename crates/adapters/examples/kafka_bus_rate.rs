//! How fast the Kafka bus moves events: publishes `EVENTS` events (1 KiB CloudEvents, 64
//! subjects) with 16 concurrent publishers, then consumes them with one subscription that
//! acks each, and prints both rates. A measurement, not a test:
//!
//! ```sh
//! cargo run --release -p ferrobank-adapters --example kafka_bus_rate -- [kafka://127.0.0.1:9092] [events]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferrobank_adapters::bus::{KafkaBus, KafkaBusOptions};
use ferrobank_application::bus::{Event, EventBus};
use serde_json::json;
use uuid::Uuid;

const PUBLISHERS: usize = 16;
const SUBJECTS: usize = 64;
const TYPE: &str = "bench.rate";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "kafka://127.0.0.1:9092".into());
    let events: usize = args.next().map_or(5_000, |n| n.parse().expect("a number of events"));
    let options = KafkaBusOptions {
        topic_prefix: format!("rate-{}", Uuid::new_v4().simple()),
        prefetch: 512,
        ..KafkaBusOptions::default()
    };
    let bus = KafkaBus::connect(&url, options).await.expect("connect");
    let mut subscription = bus.subscribe("rate", &[TYPE]).await.expect("subscribe");

    let pad = "x".repeat(600);
    let batched = args.next().as_deref() == Some("batch");
    if batched {
        // As the outbox relay publishes: rounds of up to 500 events through `publish_all`.
        let all: Vec<Event> = (0..events).map(|n| event(n, &pad)).collect();
        let started = Instant::now();
        for round in all.chunks(500) {
            let results = bus.publish_all(round).await;
            assert!(results.iter().all(Result::is_ok), "a publish failed");
        }
        let publish_ms = started.elapsed().as_millis().max(1);
        println!(
            "published {events} events in rounds of 500 in {publish_ms} ms: {} msg/s",
            events as u128 * 1_000 / publish_ms
        );
        drop(subscription);
        bus.delete_consumer("rate").await.expect("delete the consumer's topics");
        bus.teardown().await.expect("delete the events topic");
        return;
    }
    let started = Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..PUBLISHERS {
        let (bus, pad) = (bus.clone(), pad.clone());
        publishers.spawn(async move {
            let mut ids = Vec::new();
            for n in (p..events).step_by(PUBLISHERS) {
                let event = event(n, &pad);
                bus.publish(&event).await.expect("publish");
                ids.push(event.id);
            }
            ids
        });
    }
    let published: BTreeSet<String> = publishers.join_all().await.into_iter().flatten().collect();
    let publish_ms = started.elapsed().as_millis().max(1);
    println!(
        "published {events} events in {publish_ms} ms: {} msg/s",
        events as u128 * 1_000 / publish_ms
    );

    let started = Instant::now();
    let mut seen = BTreeSet::new();
    while seen.len() < published.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("a delivery within 30 s")
            .expect("a delivery");
        seen.insert(delivery.event().id.clone());
        delivery.ack().await.expect("ack");
    }
    let consume_ms = started.elapsed().as_millis().max(1);
    println!(
        "consumed and acked {} events in {consume_ms} ms: {} msg/s",
        seen.len(),
        seen.len() as u128 * 1_000 / consume_ms
    );
    drop(subscription);
    bus.delete_consumer("rate").await.expect("delete the consumer's topics");
    bus.teardown().await.expect("delete the events topic");
}

/// Event `n` of the run: about 1 KiB, one of [`SUBJECTS`] subjects.
fn event(n: usize, pad: &str) -> Event {
    Event::new(
        Uuid::now_v7(),
        "/ferrobank/bench",
        TYPE,
        format!("acct-{}", n % SUBJECTS),
        "2025-01-31T12:00:00.000Z",
        json!({ "n": n, "pad": pad }),
    )
}
