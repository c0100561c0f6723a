//! The bus on RabbitMQ (AMQP 0-9-1 through lapin).
//!
//! Topology, every name under the configurable prefix `p`:
//!
//! - `p.events`: one durable topic exchange; an event's routing key is its type.
//! - `p.<consumer>`: the consumer's durable queue (quorum by default), bound to its types.
//! - `p.<consumer>.retry.<ms>`: one delay queue per distinct backoff of the retry policy.
//!   A retried event is published there with its attempt header incremented; when the
//!   queue's message TTL runs out RabbitMQ dead-letters it back to `p.<consumer>`.
//! - `p.<consumer>.dlq`: the consumer's dead letters, with the attempt and the reason in
//!   headers.
//!
//! Events are persistent (delivery mode 2) CloudEvents in structured JSON mode. Publishing
//! waits for the publisher confirm; moving a delivery to a retry queue or the DLQ publishes
//! the copy (confirmed, mandatory) before acknowledging the original, so a crash in between
//! duplicates an event and never loses one. Publishing and consuming use separate
//! connections (RabbitMQ's flow control blocks publishing connections); a broken connection
//! is replaced on the next publish or subscribe, and subscriptions on it end with
//! [`BusError::Unavailable`].

use std::collections::BTreeSet;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ferrobank_application::bus::{
    BusError, CLOUDEVENTS_JSON, DEFAULT_PREFETCH, DeadLetter, DeadLetterReason, Delivery, Event,
    EventBus, MAX_DEAD_LETTERS_READ, MAX_PREFETCH, Outcome, RetryPolicy, Settle, Subscription,
    validate_consumer, validate_subscription,
};
use futures_core::Stream;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use super::BusMetrics;

const METRICS: BusMetrics = BusMetrics { bus: "rabbitmq" };

/// The header carrying the attempt number (absent on the first delivery).
pub const ATTEMPT_HEADER: &str = "x-ferrobank-attempt";
/// The header of a dead letter naming why it is there ([`DeadLetterReason::as_str`]).
pub const REASON_HEADER: &str = "x-ferrobank-dead-letter-reason";
/// Persistent messages survive a broker restart (AMQP delivery mode 2).
const PERSISTENT: u8 = 2;
/// Longest prefix, in bytes: names are prefix + consumer + suffix within AMQP's 255.
const MAX_PREFIX_BYTES: usize = 64;

/// Which kind of queue holds a consumer's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Raft-replicated, the durable default RabbitMQ recommends; dead-letters at least once.
    Quorum,
    /// Classic durable queues (single node; lighter).
    Classic,
}

/// Where the bus lives on the broker and how it behaves.
#[derive(Debug, Clone)]
pub struct RabbitBusOptions {
    /// Prepended (with a `.`) to every exchange and queue name, so that several
    /// environments or tests share one broker: 1 to 64 bytes of `[a-z0-9_-]`.
    pub prefix: String,
    /// Kind of the consumer, retry and dead-letter queues.
    pub queue_type: QueueType,
    /// When retried deliveries come back, and how often.
    pub retry: RetryPolicy,
    /// Unsettled deliveries one subscription may hold (`basic.qos`), 1 to `MAX_PREFETCH`.
    pub prefetch: u16,
    /// Longest wait to connect (TCP, AMQP handshake, topology), in milliseconds.
    pub connect_timeout_ms: u64,
    /// Longest wait for one broker operation (a publish and its confirm, a declaration),
    /// in milliseconds.
    pub operation_timeout_ms: u64,
}

impl Default for RabbitBusOptions {
    fn default() -> Self {
        Self {
            prefix: "ferrobank".into(),
            queue_type: QueueType::Quorum,
            retry: RetryPolicy::default(),
            prefetch: DEFAULT_PREFETCH,
            connect_timeout_ms: 5_000,
            operation_timeout_ms: 5_000,
        }
    }
}

/// The RabbitMQ [`EventBus`]; clones share connections.
#[derive(Clone)]
pub struct RabbitBus {
    shared: Arc<Shared>,
}

struct Shared {
    url: String,
    options: RabbitBusOptions,
    link: tokio::sync::Mutex<Option<Link>>,
    /// Consumers whose queues this bus declared (what [`RabbitBus::teardown`] deletes).
    declared: Mutex<BTreeSet<String>>,
}

/// The live connections: one to publish (in confirm mode), one to consume.
struct Link {
    publishing: Connection,
    publisher: Channel,
    consuming: Connection,
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("url", &redact(&self.shared.url))
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable url>".into(),
    }
}

fn not_connected() -> BusError {
    BusError::Unavailable("not connected".into())
}

fn broker(context: &str, error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{context}: {error}"))
}

/// The names of one consumer's queues.
#[derive(Debug, Clone)]
struct Names {
    queue: String,
    dlq: String,
    prefix: String,
    consumer: String,
}

impl Names {
    fn new(prefix: &str, consumer: &str) -> Self {
        Self {
            queue: format!("{prefix}.{consumer}"),
            dlq: format!("{prefix}.{consumer}.dlq"),
            prefix: prefix.to_owned(),
            consumer: consumer.to_owned(),
        }
    }

    fn retry(&self, backoff_ms: u64) -> String {
        format!("{}.{}.retry.{backoff_ms}", self.prefix, self.consumer)
    }
}

impl RabbitBus {
    /// Connects to `url` (`amqp://user:password@host:5672/%2f`) and declares the exchange;
    /// fails if the broker cannot be reached now or the options are out of bounds.
    pub async fn connect(url: &str, options: RabbitBusOptions) -> Result<Self, BusError> {
        options.retry.validate()?;
        let prefix_ok = !options.prefix.is_empty()
            && options.prefix.len() <= MAX_PREFIX_BYTES
            && options
                .prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
        if !prefix_ok
            || !(1..=MAX_PREFETCH).contains(&options.prefetch)
            || options.connect_timeout_ms == 0
            || options.operation_timeout_ms == 0
        {
            return Err(BusError::InvalidOptions(format!(
                "prefix must be 1 to {MAX_PREFIX_BYTES} bytes of [a-z0-9_-], prefetch 1 to \
                 {MAX_PREFETCH}, timeouts above 0"
            )));
        }
        let bus = Self {
            shared: Arc::new(Shared {
                url: url.to_owned(),
                options,
                link: tokio::sync::Mutex::new(None),
                declared: Mutex::default(),
            }),
        };
        drop(bus.link().await?);
        Ok(bus)
    }

    /// The exchange events are published to.
    pub fn exchange(&self) -> String {
        format!("{}.events", self.shared.options.prefix)
    }

    /// The consumers whose queues this bus declared.
    pub fn declared_consumers(&self) -> Vec<String> {
        self.shared
            .declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Deletes `consumer`'s queues (its events, retries and dead letters with them).
    pub async fn delete_consumer(&self, consumer: &str) -> Result<(), BusError> {
        validate_consumer(consumer)?;
        let names = Names::new(&self.shared.options.prefix, consumer);
        let channel = self.consuming_channel().await?;
        let mut queues = vec![names.queue.clone(), names.dlq.clone()];
        queues
            .extend(self.shared.options.retry.backoffs_ms().into_iter().map(|ms| names.retry(ms)));
        for queue in queues {
            self.timed(
                "queue.delete",
                channel.queue_delete(queue.into(), QueueDeleteOptions::default()),
            )
            .await?;
        }
        self.shared.declared.lock().unwrap_or_else(PoisonError::into_inner).remove(consumer);
        Ok(())
    }

    /// Deletes every queue this bus declared and the exchange, then closes the connections.
    pub async fn teardown(&self) -> Result<(), BusError> {
        for consumer in self.declared_consumers() {
            self.delete_consumer(&consumer).await?;
        }
        let channel = self.consuming_channel().await?;
        self.timed(
            "exchange.delete",
            channel.exchange_delete(self.exchange().into(), ExchangeDeleteOptions::default()),
        )
        .await?;
        if let Some(link) = self.shared.link.lock().await.take() {
            let _ = link.publishing.close(200, "teardown".into()).await;
            let _ = link.consuming.close(200, "teardown".into()).await;
        }
        Ok(())
    }

    async fn timed<T>(
        &self,
        context: &str,
        operation: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, BusError> {
        let timeout = Duration::from_millis(self.shared.options.operation_timeout_ms);
        match tokio::time::timeout(timeout, operation).await {
            Ok(result) => result.map_err(|e| broker(context, e)),
            Err(_) => {
                Err(BusError::Unavailable(format!("{context}: no answer within {timeout:?}")))
            }
        }
    }

    /// The live link (always `Some`), reconnecting what broke.
    async fn link(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Link>>, BusError> {
        let mut link = self.shared.link.lock().await;
        let healthy = link.as_ref().is_some_and(|l| {
            l.publishing.status().connected()
                && l.publisher.status().connected()
                && l.consuming.status().connected()
        });
        if !healthy {
            let timeout = Duration::from_millis(self.shared.options.connect_timeout_ms);
            let fresh =
                tokio::time::timeout(timeout, self.open_link()).await.unwrap_or_else(|_| {
                    Err(BusError::Unavailable(format!(
                        "connecting to {}: no answer within {timeout:?}",
                        redact(&self.shared.url)
                    )))
                })?;
            if let Some(old) = link.replace(fresh) {
                // Whatever is still open on the old link (a live consuming connection)
                // closes; its subscriptions end and their deliveries come back.
                tokio::spawn(async move {
                    let _ = old.publishing.close(200, "reconnecting".into()).await;
                    let _ = old.consuming.close(200, "reconnecting".into()).await;
                });
            }
        }
        Ok(link)
    }

    async fn open_link(&self) -> Result<Link, BusError> {
        let url = &self.shared.url;
        let prefix = &self.shared.options.prefix;
        let connect = |role: &'static str| async move {
            let properties = ConnectionProperties::default()
                .with_connection_name(format!("ferrobank {prefix} {role}").into());
            Connection::connect(url, properties)
                .await
                .map_err(|e| broker(&format!("connecting to {}", redact(url)), e))
        };
        let publishing = connect("publisher").await?;
        let consuming = connect("consumer").await?;
        let publisher = publishing.create_channel().await.map_err(|e| broker("channel.open", e))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| broker("confirm.select", e))?;
        publisher
            .exchange_declare(
                self.exchange().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker("exchange.declare", e))?;
        Ok(Link { publishing, publisher, consuming })
    }

    async fn publisher(&self) -> Result<Channel, BusError> {
        let link = self.link().await?;
        link.as_ref().map(|link| link.publisher.clone()).ok_or_else(not_connected)
    }

    /// A new channel on the consuming connection.
    async fn consuming_channel(&self) -> Result<Channel, BusError> {
        let link = self.link().await?;
        let connection = &link.as_ref().ok_or_else(not_connected)?.consuming;
        self.timed("channel.open", connection.create_channel()).await
    }

    /// Publishes and waits for the broker's confirm; `mandatory` turns "no queue for it"
    /// into an error.
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), BusError> {
        let publisher = self.publisher().await?;
        let target = ShortString::try_new(routing_key).map_err(|e| broker("basic.publish", e))?;
        let exchange = ShortString::try_new(exchange).map_err(|e| broker("basic.publish", e))?;
        let options = BasicPublishOptions { mandatory, ..BasicPublishOptions::default() };
        let confirmed = async {
            publisher.basic_publish(exchange, target, options, body, properties).await?.await
        };
        match self.timed("basic.publish", confirmed).await? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BusError::Unavailable(format!(
                "{routing_key}: no queue took the message (it was returned)"
            ))),
            Confirmation::Nack(_) => Err(BusError::Nacked),
            Confirmation::NotRequested => {
                Err(BusError::Unavailable("the publisher channel is not in confirm mode".into()))
            }
        }
    }

    /// Declares `consumer`'s queues and binds it to `types`, on `channel`.
    async fn declare_consumer(
        &self,
        channel: &Channel,
        names: &Names,
        types: &[&str],
    ) -> Result<u32, BusError> {
        let options = &self.shared.options;
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        let base = |quorum_dead_lettering: bool| {
            let mut arguments = FieldTable::default();
            if options.queue_type == QueueType::Quorum {
                arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
                if quorum_dead_lettering {
                    // At-least-once dead-lettering: a retry is never lost on its way back.
                    arguments.insert(
                        "x-dead-letter-strategy".into(),
                        AMQPValue::LongString("at-least-once".into()),
                    );
                    arguments.insert(
                        "x-overflow".into(),
                        AMQPValue::LongString("reject-publish".into()),
                    );
                }
            }
            arguments
        };
        self.timed(
            "queue.declare",
            channel.queue_declare(names.queue.as_str().into(), durable, base(false)),
        )
        .await?;
        for backoff_ms in options.retry.backoffs_ms() {
            let mut arguments = base(true);
            arguments.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::try_from(backoff_ms).unwrap_or(i64::MAX)),
            );
            arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(names.queue.as_str().into()),
            );
            self.timed(
                "queue.declare",
                channel.queue_declare(names.retry(backoff_ms).into(), durable, arguments),
            )
            .await?;
        }
        let dlq = self
            .timed(
                "queue.declare",
                channel.queue_declare(names.dlq.as_str().into(), durable, base(false)),
            )
            .await?;
        for type_ in types {
            self.timed(
                "queue.bind",
                channel.queue_bind(
                    names.queue.as_str().into(),
                    self.exchange().into(),
                    (*type_).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        self.shared
            .declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(names.consumer.clone());
        Ok(dlq.message_count())
    }

    /// Moves a delivery: publishes its copy to `queue` with `headers` set (confirmed), then
    /// acknowledges the original.
    async fn move_delivery(
        &self,
        acker: &Acker,
        body: &[u8],
        properties: &BasicProperties,
        queue: &str,
        headers: &[(&str, AMQPValue)],
    ) -> Result<(), BusError> {
        let mut table = properties.headers().clone().unwrap_or_default();
        for (name, value) in headers {
            table.insert((*name).into(), value.clone());
        }
        let properties = properties.clone().with_headers(table);
        self.publish_confirmed("", queue, body, properties, true).await?;
        acknowledge(acker).await
    }

    /// Dead-letters a delivery and updates the DLQ depth gauge.
    async fn dead_letter(
        &self,
        names: &Names,
        acker: &Acker,
        body: &[u8],
        properties: &BasicProperties,
        attempt: u32,
        reason: DeadLetterReason,
    ) -> Result<(), BusError> {
        let headers = [
            (ATTEMPT_HEADER, AMQPValue::LongLongInt(i64::from(attempt))),
            (REASON_HEADER, AMQPValue::LongString(reason.as_str().into())),
        ];
        self.move_delivery(acker, body, properties, &names.dlq, &headers).await?;
        METRICS.dead_lettered(&names.consumer, reason);
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        if let Ok(channel) = self.consuming_channel().await
            && let Ok(dlq) = self
                .timed(
                    "queue.declare",
                    channel.queue_declare(
                        names.dlq.as_str().into(),
                        passive,
                        FieldTable::default(),
                    ),
                )
                .await
        {
            METRICS.dead_letters(&names.consumer, u64::from(dlq.message_count()));
            let _ = channel.close(200, "OK".into()).await;
        }
        Ok(())
    }
}

async fn acknowledge(acker: &Acker) -> Result<(), BusError> {
    match acker.ack(lapin::options::BasicAckOptions::default()).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(BusError::NotInFlight),
        Err(e) => Err(broker("basic.ack", e)),
    }
}

/// A numeric header as a `u32` (AMQP peers pick various integer widths).
fn header_u32(properties: &BasicProperties, name: &str) -> Option<u32> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    let number: i64 = match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    };
    u32::try_from(number).ok()
}

fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[async_trait]
impl EventBus for RabbitBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let body = event.to_json_bytes()?;
        let properties = BasicProperties::default()
            .with_content_type(CLOUDEVENTS_JSON.into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(event.id.as_str().into())
            .with_type(event.type_.as_str().into());
        // Not mandatory: an event no consumer is bound to is not an error.
        self.publish_confirmed(&self.exchange(), &event.type_, &body, properties, false).await?;
        METRICS.published(&event.type_);
        Ok(())
    }

    async fn subscribe(
        &self,
        consumer: &str,
        types: &[&str],
    ) -> Result<Box<dyn Subscription>, BusError> {
        validate_subscription(consumer, types)?;
        let names = Names::new(&self.shared.options.prefix, consumer);
        let channel = self.consuming_channel().await?;
        let prefetch = self.shared.options.prefetch;
        self.timed("basic.qos", channel.basic_qos(prefetch, BasicQosOptions::default())).await?;
        let dead_letters = self.declare_consumer(&channel, &names, types).await?;
        METRICS.dead_letters(consumer, u64::from(dead_letters));
        let stream = self
            .timed(
                "basic.consume",
                channel.basic_consume(
                    names.queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        Ok(Box::new(RabbitSubscription { bus: self.clone(), names, stream, channel, prefetch }))
    }

    async fn dead_letters(&self, consumer: &str, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        validate_consumer(consumer)?;
        let names = Names::new(&self.shared.options.prefix, consumer);
        let channel = self.consuming_channel().await?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        // No such queue (never subscribed): no dead letters. The broker closes the channel.
        let Ok(dlq) = self
            .timed(
                "queue.declare",
                channel.queue_declare(names.dlq.as_str().into(), passive, FieldTable::default()),
            )
            .await
        else {
            return Ok(Vec::new());
        };
        METRICS.dead_letters(consumer, u64::from(dlq.message_count()));
        // Taken without acknowledging, then given back by closing the channel: a read
        // leaves the queue as it was.
        let mut letters = Vec::new();
        while letters.len() < max.min(MAX_DEAD_LETTERS_READ) {
            let got = self
                .timed(
                    "basic.get",
                    channel.basic_get(names.dlq.as_str().into(), BasicGetOptions::default()),
                )
                .await?;
            let Some(message) = got else { break };
            let properties = &message.delivery.properties;
            let event = Event::from_json_bytes(&message.delivery.data).ok();
            let reason = header_str(properties, REASON_HEADER)
                .and_then(|name| DeadLetterReason::parse(&name))
                .unwrap_or(if event.is_some() {
                    DeadLetterReason::Rejected
                } else {
                    DeadLetterReason::Malformed
                });
            let attempt = header_u32(properties, ATTEMPT_HEADER).unwrap_or(1).max(1);
            letters.push(DeadLetter { event, attempt, reason });
        }
        self.timed("channel.close", channel.close(200, "OK".into())).await?;
        Ok(letters)
    }
}

/// A consumer on its own channel with `basic.qos` = prefetch.
struct RabbitSubscription {
    bus: RabbitBus,
    names: Names,
    stream: lapin::Consumer,
    /// Owned so that dropping the subscription closes the channel, which returns its
    /// unacknowledged deliveries to the queue.
    channel: Channel,
    prefetch: u16,
}

impl std::fmt::Debug for RabbitSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSubscription")
            .field("queue", &self.names.queue)
            .field("channel", &self.channel.id())
            .finish_non_exhaustive()
    }
}

impl Drop for RabbitSubscription {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = channel.close(200, "subscription dropped".into()).await;
            });
        }
    }
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let next = poll_fn(|cx| Pin::new(&mut self.stream).poll_next(cx)).await;
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(broker("consuming", e)),
                None => return Err(BusError::Unavailable("the consumer was cancelled".into())),
            };
            let attempt = header_u32(&delivery.properties, ATTEMPT_HEADER).unwrap_or(1).max(1);
            match Event::from_json_bytes(&delivery.data) {
                Ok(event) => {
                    METRICS.delivered(&self.names.consumer);
                    let settle = RabbitSettle {
                        bus: self.bus.clone(),
                        names: self.names.clone(),
                        attempt,
                        acker: delivery.acker,
                        body: delivery.data,
                        properties: delivery.properties,
                    };
                    return Ok(Delivery::new(
                        event,
                        attempt,
                        delivery.redelivered,
                        Box::new(settle),
                    ));
                }
                Err(error) => {
                    tracing::warn!(
                        queue = %self.names.queue,
                        message_id = ?delivery.properties.message_id(),
                        %error,
                        "not a valid event: moved to the dead-letter queue"
                    );
                    self.bus
                        .dead_letter(
                            &self.names,
                            &delivery.acker,
                            &delivery.data,
                            &delivery.properties,
                            attempt,
                            DeadLetterReason::Malformed,
                        )
                        .await?;
                }
            }
        }
    }

    fn prefetch(&self) -> u16 {
        self.prefetch
    }
}

/// One unacknowledged delivery, with what it takes to move it elsewhere.
struct RabbitSettle {
    bus: RabbitBus,
    names: Names,
    attempt: u32,
    acker: Acker,
    body: Vec<u8>,
    properties: BasicProperties,
}

impl std::fmt::Debug for RabbitSettle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSettle")
            .field("queue", &self.names.queue)
            .field("attempt", &self.attempt)
            .field("message_id", self.properties.message_id())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn settle(self: Box<Self>, outcome: Outcome) -> Result<(), BusError> {
        let Self { bus, names, attempt, acker, body, properties } = *self;
        let retry = bus.shared.options.retry;
        match outcome {
            Outcome::Ack => {
                acknowledge(&acker).await?;
                METRICS.acked(&names.consumer);
            }
            Outcome::Retry if attempt >= retry.max_attempts => {
                bus.dead_letter(
                    &names,
                    &acker,
                    &body,
                    &properties,
                    attempt,
                    DeadLetterReason::MaxAttempts,
                )
                .await?;
            }
            Outcome::Retry => {
                let queue = names.retry(retry.backoff_ms(attempt));
                let headers = [(ATTEMPT_HEADER, AMQPValue::LongLongInt(i64::from(attempt) + 1))];
                bus.move_delivery(&acker, &body, &properties, &queue, &headers).await?;
                METRICS.retried(&names.consumer);
            }
            Outcome::Reject => {
                bus.dead_letter(
                    &names,
                    &acker,
                    &body,
                    &properties,
                    attempt,
                    DeadLetterReason::Rejected,
                )
                .await?;
            }
        }
        Ok(())
    }
}
