//! The [`EventBus`](ferrobank_application::EventBus) backends: `memory` inside one process
//! (the embedded default), `rabbitmq` (durable, shared by processes) and `kafka` (durable,
//! partitioned by subject, offsets in consumer groups). All follow the port's contract,
//! checked by the conformance suite in `tests/bus.rs`, and count the same metrics (label
//! `bus` = `memory`, `rabbitmq` or `kafka`):
//!
//! | metric | labels |
//! |---|---|
//! | `ferrobank_bus_published_total` | `bus`, `type` |
//! | `ferrobank_bus_delivered_total` | `bus`, `consumer` |
//! | `ferrobank_bus_acked_total` | `bus`, `consumer` |
//! | `ferrobank_bus_retried_total` | `bus`, `consumer` |
//! | `ferrobank_bus_dead_lettered_total` | `bus`, `consumer`, `reason` |
//! | `ferrobank_bus_dead_letters` (gauge: DLQ depth) | `bus`, `consumer` |

mod kafka;
mod memory;
mod rabbitmq;

pub use self::kafka::{KafkaBus, KafkaBusOptions};
pub use self::memory::{MemoryBus, MemoryBusOptions};
pub use self::rabbitmq::{QueueType, RabbitBus, RabbitBusOptions};

use ferrobank_application::bus::DeadLetterReason;

/// The metrics of one backend, labelled with its name.
#[derive(Debug, Clone, Copy)]
struct BusMetrics {
    bus: &'static str,
}

impl BusMetrics {
    fn published(self, type_: &str) {
        metrics::counter!("ferrobank_bus_published_total", "bus" => self.bus, "type" => type_.to_owned())
            .increment(1);
    }

    fn delivered(self, consumer: &str) {
        metrics::counter!("ferrobank_bus_delivered_total", "bus" => self.bus, "consumer" => consumer.to_owned())
            .increment(1);
    }

    fn acked(self, consumer: &str) {
        metrics::counter!("ferrobank_bus_acked_total", "bus" => self.bus, "consumer" => consumer.to_owned())
            .increment(1);
    }

    fn retried(self, consumer: &str) {
        metrics::counter!("ferrobank_bus_retried_total", "bus" => self.bus, "consumer" => consumer.to_owned())
            .increment(1);
    }

    fn dead_lettered(self, consumer: &str, reason: DeadLetterReason) {
        metrics::counter!(
            "ferrobank_bus_dead_lettered_total",
            "bus" => self.bus,
            "consumer" => consumer.to_owned(),
            "reason" => reason.as_str()
        )
        .increment(1);
    }

    #[allow(clippy::cast_precision_loss)] // a queue depth is far below 2^52
    fn dead_letters(self, consumer: &str, depth: u64) {
        metrics::gauge!("ferrobank_bus_dead_letters", "bus" => self.bus, "consumer" => consumer.to_owned())
            .set(depth as f64);
    }
}
