//! The bus inside one process: per consumer a bounded queue, deliveries in flight per
//! subscription, retries waiting out their backoff, and a dead-letter queue. Nothing
//! survives the process; what it does while it runs is what RabbitMQ does.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ferrobank_application::bus::{
    BusError, DEFAULT_PREFETCH, DeadLetter, DeadLetterReason, Delivery, Event, EventBus,
    MAX_DEAD_LETTERS_READ, MAX_PREFETCH, Outcome, RetryPolicy, Settle, Subscription,
    validate_consumer, validate_subscription,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::BusMetrics;

const METRICS: BusMetrics = BusMetrics { bus: "memory" };

/// Bounds and retry policy of a [`MemoryBus`].
#[derive(Debug, Clone)]
pub struct MemoryBusOptions {
    /// When a consumer's retried deliveries come back, and how often.
    pub retry: RetryPolicy,
    /// Unsettled deliveries one subscription may hold (1 to `MAX_PREFETCH`).
    pub prefetch: u16,
    /// Most events one consumer's queue holds: ready, waiting out a backoff or in flight.
    /// A publish that would exceed it answers [`BusError::Full`] and delivers nothing.
    pub max_queue_len: usize,
    /// Most dead letters kept per consumer; beyond it the oldest is dropped (logged).
    pub max_dead_letters: usize,
}

impl Default for MemoryBusOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            prefetch: DEFAULT_PREFETCH,
            max_queue_len: 10_000,
            max_dead_letters: 10_000,
        }
    }
}

/// The in-process [`EventBus`]; clones share the same queues.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    options: MemoryBusOptions,
    registry: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    consumers: BTreeMap<String, Arc<ConsumerQueue>>,
    /// Publish order, kept on every copy: requeued deliveries go back in this order.
    next_seq: u64,
}

/// One consumer's queue, shared by its subscriptions and their deliveries.
#[derive(Debug)]
struct ConsumerQueue {
    name: String,
    options: MemoryBusOptions,
    state: Mutex<QueueState>,
    /// Woken on every change a waiting `next` may care about.
    changed: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    types: BTreeSet<String>,
    ready: VecDeque<Message>,
    /// Retries waiting out their backoff, by due time (then publish order).
    delayed: BTreeMap<(Instant, u64), Message>,
    in_flight: HashMap<u64, InFlight>,
    /// Unsettled deliveries per subscription (for the prefetch bound).
    held: HashMap<u64, u16>,
    dead: VecDeque<DeadLetter>,
    next_tag: u64,
    next_subscription: u64,
}

#[derive(Debug, Clone)]
struct Message {
    seq: u64,
    event: Arc<Event>,
    attempt: u32,
    redelivered: bool,
}

#[derive(Debug)]
struct InFlight {
    subscription: u64,
    message: Message,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryBus {
    /// An empty bus; fails on options out of bounds.
    pub fn new(options: MemoryBusOptions) -> Result<Self, BusError> {
        options.retry.validate()?;
        if !(1..=MAX_PREFETCH).contains(&options.prefetch)
            || options.max_queue_len == 0
            || options.max_dead_letters == 0
        {
            return Err(BusError::InvalidOptions(format!(
                "prefetch must be 1 to {MAX_PREFETCH}, max_queue_len and max_dead_letters above 0"
            )));
        }
        Ok(Self { shared: Arc::new(Shared { options, registry: Mutex::default() }) })
    }

    fn queue(&self, consumer: &str) -> Option<Arc<ConsumerQueue>> {
        lock(&self.shared.registry).consumers.get(consumer).cloned()
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        event.to_json_bytes()?; // validates and bounds the size, as a broker would
        let event = Arc::new(event.clone());
        // The registry lock orders publishes and makes the capacity check and the pushes
        // one step: a full queue refuses the event for every consumer.
        let mut registry = lock(&self.shared.registry);
        let targets: Vec<Arc<ConsumerQueue>> = registry
            .consumers
            .values()
            .filter(|queue| lock(&queue.state).types.contains(&event.type_))
            .cloned()
            .collect();
        for queue in &targets {
            if lock(&queue.state).len() >= queue.options.max_queue_len {
                return Err(BusError::Full { consumer: queue.name.clone() });
            }
        }
        let seq = registry.next_seq;
        registry.next_seq += 1;
        for queue in &targets {
            let message = Message { seq, event: event.clone(), attempt: 1, redelivered: false };
            lock(&queue.state).ready.push_back(message);
            queue.changed.notify_waiters();
        }
        METRICS.published(&event.type_);
        Ok(())
    }

    async fn subscribe(
        &self,
        consumer: &str,
        types: &[&str],
    ) -> Result<Box<dyn Subscription>, BusError> {
        validate_subscription(consumer, types)?;
        let queue = lock(&self.shared.registry)
            .consumers
            .entry(consumer.to_owned())
            .or_insert_with(|| {
                Arc::new(ConsumerQueue {
                    name: consumer.to_owned(),
                    options: self.shared.options.clone(),
                    state: Mutex::default(),
                    changed: Notify::new(),
                })
            })
            .clone();
        let id = {
            let mut state = lock(&queue.state);
            state.types.extend(types.iter().map(|t| (*t).to_owned()));
            state.next_subscription += 1;
            state.next_subscription
        };
        Ok(Box::new(MemorySubscription { queue, id }))
    }

    async fn dead_letters(&self, consumer: &str, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        validate_consumer(consumer)?;
        let Some(queue) = self.queue(consumer) else { return Ok(Vec::new()) };
        let state = lock(&queue.state);
        Ok(state.dead.iter().take(max.min(MAX_DEAD_LETTERS_READ)).cloned().collect())
    }
}

impl QueueState {
    /// Events the queue holds against its bound.
    fn len(&self) -> usize {
        self.ready.len() + self.delayed.len() + self.in_flight.len()
    }

    /// Moves retries whose backoff is over to the back of the queue.
    fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.ready.push_back(entry.remove());
        }
    }

    fn dead_letter(&mut self, queue: &ConsumerQueue, message: Message, reason: DeadLetterReason) {
        self.dead.push_back(DeadLetter {
            event: Some(Event::clone(&message.event)),
            attempt: message.attempt,
            reason,
        });
        METRICS.dead_lettered(&queue.name, reason);
        if self.dead.len() > queue.options.max_dead_letters
            && let Some(dropped) = self.dead.pop_front()
        {
            tracing::error!(
                consumer = %queue.name,
                event_id = dropped.event.as_ref().map_or("", |e| e.id.as_str()),
                max_dead_letters = queue.options.max_dead_letters,
                "dead-letter queue full: dropped its oldest event"
            );
            metrics::counter!("ferrobank_bus_dead_letters_dropped_total", "consumer" => queue.name.clone())
                .increment(1);
        }
        METRICS.dead_letters(&queue.name, self.dead.len() as u64);
    }
}

/// One subscription: takes from its consumer's queue, at most `prefetch` unsettled.
#[derive(Debug)]
struct MemorySubscription {
    queue: Arc<ConsumerQueue>,
    id: u64,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let queue = &self.queue;
        loop {
            // Registered before looking, so a change between the look and the wait wakes us.
            let changed = queue.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake_at = {
                let mut state = lock(&queue.state);
                state.promote_due(Instant::now());
                let held = state.held.get(&self.id).copied().unwrap_or(0);
                if held < queue.options.prefetch
                    && let Some(message) = state.ready.pop_front()
                {
                    let tag = state.next_tag;
                    state.next_tag += 1;
                    *state.held.entry(self.id).or_default() += 1;
                    let delivery = Delivery::new(
                        Event::clone(&message.event),
                        message.attempt,
                        message.redelivered,
                        Box::new(MemorySettle { queue: queue.clone(), tag }),
                    );
                    state.in_flight.insert(tag, InFlight { subscription: self.id, message });
                    METRICS.delivered(&queue.name);
                    return Ok(delivery);
                }
                state.delayed.keys().next().map(|(due, _)| *due)
            };
            match wake_at {
                Some(due) => tokio::select! {
                    () = &mut changed => {}
                    () = tokio::time::sleep_until(due) => {}
                },
                None => changed.await,
            }
        }
    }

    fn prefetch(&self) -> u16 {
        self.queue.options.prefetch
    }
}

impl Drop for MemorySubscription {
    /// Whatever the subscription left unsettled goes back to the head of the queue, in
    /// publish order, marked redelivered (as a broker does when a consumer's channel closes).
    fn drop(&mut self) {
        let mut state = lock(&self.queue.state);
        let tags: Vec<u64> = state
            .in_flight
            .iter()
            .filter(|(_, in_flight)| in_flight.subscription == self.id)
            .map(|(tag, _)| *tag)
            .collect();
        let mut returned: Vec<Message> =
            tags.iter().filter_map(|tag| state.in_flight.remove(tag)).map(|f| f.message).collect();
        returned.sort_by_key(|message| message.seq);
        for mut message in returned.into_iter().rev() {
            message.redelivered = true;
            state.ready.push_front(message);
        }
        state.held.remove(&self.id);
        drop(state);
        self.queue.changed.notify_waiters();
    }
}

/// One unsettled delivery of a [`MemorySubscription`].
#[derive(Debug)]
struct MemorySettle {
    queue: Arc<ConsumerQueue>,
    tag: u64,
}

#[async_trait]
impl Settle for MemorySettle {
    async fn settle(self: Box<Self>, outcome: Outcome) -> Result<(), BusError> {
        let queue = &self.queue;
        let mut state = lock(&queue.state);
        let InFlight { subscription, mut message } =
            state.in_flight.remove(&self.tag).ok_or(BusError::NotInFlight)?;
        if let Some(held) = state.held.get_mut(&subscription) {
            *held = held.saturating_sub(1);
        }
        match outcome {
            Outcome::Ack => METRICS.acked(&queue.name),
            Outcome::Retry if message.attempt >= queue.options.retry.max_attempts => {
                state.dead_letter(queue, message, DeadLetterReason::MaxAttempts);
            }
            Outcome::Retry => {
                let backoff =
                    Duration::from_millis(queue.options.retry.backoff_ms(message.attempt));
                message.attempt += 1;
                message.redelivered = false;
                state.delayed.insert((Instant::now() + backoff, message.seq), message);
                METRICS.retried(&queue.name);
            }
            Outcome::Reject => state.dead_letter(queue, message, DeadLetterReason::Rejected),
        }
        drop(state);
        queue.changed.notify_waiters();
        Ok(())
    }
}
