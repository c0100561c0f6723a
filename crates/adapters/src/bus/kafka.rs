//! The bus on Kafka (any broker speaking the Kafka protocol: Apache Kafka, Redpanda, tansu)
//! through `rskafka`, a pure-Rust client (no librdkafka to install).
//!
//! Topics, every name under the configurable prefix `p`:
//!
//! - `p.events`: every event, in the CloudEvents JSON format (structured mode), keyed by its
//!   subject and partitioned by the key's murmur2 hash as Kafka's own clients do, so that
//!   one subject's events keep their order. The type travels in the `ce_type` header;
//!   consumers skip the types they are not bound to.
//! - `p.<consumer>.retry`: the consumer's retried events, keyed by subject, with the next
//!   attempt and the time it is due in headers. A subscription reads it beside `p.events`
//!   and holds a record back until it is due.
//! - `p.<consumer>.dlq`: the consumer's dead letters (one partition: oldest first), with
//!   the attempt and the reason in headers.
//!
//! Every subscription of a consumer is a member of the consumer group `p.<consumer>`
//! (rskafka has no group API, so this module speaks the group requests itself:
//! FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//! OffsetFetch). Members subscribe to `p.events` and `p.<consumer>.retry` with the
//! standard ConsumerProtocol encoding; the leader assigns the partitions with the range
//! assignor, so the subscriptions of one consumer (in one process or several) share the
//! partitions and each event reaches one of them. A task per subscription heartbeats every
//! third of `session_timeout_ms` and, when the coordinator rebalances, stops handing out,
//! lets the deliveries in flight settle (half a session at most), commits, gives up its
//! partitions and joins again (the eager protocol); a dropped subscription commits and
//! leaves the group, so its partitions move at once.
//!
//! The group holds how far the consumer has settled. A partition's offset moves only past
//! deliveries that are all settled (acked, or their copy confirmed on the retry or
//! dead-letter topic); the member commits that prefix every `commit_interval_ms`, before a
//! rebalance and when it leaves, with its generation and member id, and only for the
//! partitions it owns, so the unsettled deliveries of a member that ends come back to the
//! partitions' next owner. Group `p.<consumer>.delivered` (no members) records how far
//! deliveries went, which is what marks a delivery `redelivered`. A consumer's first
//! subscription starts its group at the end of `p.events`: earlier events are not kept for
//! it.
//!
//! Fetching is pipelined: each assigned partition has one fetch under way whenever its
//! buffer runs low, so the next records arrive while the buffered ones are handed out.
//!
//! Publishing waits for the broker's acknowledgement from every in-sync replica
//! (`acks=all`); moving a delivery to the retry or dead-letter topic does the same before
//! its offset may be committed, so a crash in between duplicates an event and never loses
//! one.
//!
//! Limits: type bindings are kept by the [`KafkaBus`] value, not on the broker. A retry
//! partition is read in order, so a retry waits for the ones written before it to be due.
//! Offsets committed by a member whose generation is over are refused by Apache Kafka;
//! tansu 0.6 accepts them (it does not fence commits), which is harmless here because a
//! member commits only settled prefixes of the partitions it owned. A member that misses
//! its session on tansu 0.6 is dropped without a new generation; the survivors then join
//! afresh (see [`Membership::join`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use ferrobank_application::bus::{
    BusError, CLOUDEVENTS_JSON, DEFAULT_PREFETCH, DeadLetter, DeadLetterReason, Delivery, Event,
    EventBus, MAX_DEAD_LETTERS_READ, MAX_PREFETCH, Outcome, RetryPolicy, Settle, Subscription,
    not_attempted, validate_consumer, validate_subscription,
};
use rskafka::BackoffConfig;
use rskafka::chrono::{DateTime, Utc};
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::{Record, RecordAndOffset};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::BusMetrics;

const METRICS: BusMetrics = BusMetrics { bus: "kafka" };

/// The header naming the event's type (CloudEvents Kafka binding).
pub const TYPE_HEADER: &str = "ce_type";
/// The header carrying the attempt number (absent on the first delivery).
pub const ATTEMPT_HEADER: &str = "x-ferrobank-attempt";
/// The header of a retried event: when it is due, in Unix milliseconds.
pub const DUE_HEADER: &str = "x-ferrobank-due-ms";
/// The header of a dead letter naming why it is there ([`DeadLetterReason::as_str`]).
pub const REASON_HEADER: &str = "x-ferrobank-dead-letter-reason";
/// Longest prefix, in bytes: topic names stay well within Kafka's 249.
const MAX_PREFIX_BYTES: usize = 64;
/// Most records of one produce request of `publish_all`.
const MAX_PRODUCE_RECORDS: usize = 256;
/// Most event bytes of one produce request of `publish_all` (a chunk may exceed it by one
/// event): under a broker's default 1 MiB `message.max.bytes` with room for the framing.
const MAX_PRODUCE_BYTES: usize = 512 * 1024;
/// Most partitions of the events and retry topics this bus creates.
const MAX_PARTITIONS: u16 = 256;
/// Most bytes one fetch of one partition asks for (room for many of the largest events).
const MAX_FETCH_BYTES: i32 = 4 * 1024 * 1024;
/// The fetch wait of a fetch that should answer at once, in milliseconds (some brokers
/// answer a wait of 0 with nothing at all).
const IMMEDIATE_WAIT_MS: i32 = 1;
/// Longest answer of the group coordinator read, in bytes.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// The client id sent with every request.
const CLIENT_ID: &str = "ferrobank";
/// Shortest and longest group session, in milliseconds (Kafka's broker defaults allow 6 s
/// to 30 min).
const MIN_SESSION_TIMEOUT_MS: u64 = 1_000;
const MAX_SESSION_TIMEOUT_MS: u64 = 30 * 60 * 1_000;
/// Longest interval between two commits of the settled offsets, in milliseconds.
const MAX_COMMIT_INTERVAL_MS: u64 = 60_000;

/// Where the bus lives on the broker and how it behaves.
#[derive(Debug, Clone)]
pub struct KafkaBusOptions {
    /// Prepended (with a `.`) to every topic and group name, so that several environments
    /// or tests share one cluster: 1 to 64 bytes of `[a-z0-9_-]`.
    pub topic_prefix: String,
    /// When retried deliveries come back, and how often.
    pub retry: RetryPolicy,
    /// Unsettled deliveries one subscription may hold, 1 to `MAX_PREFETCH`.
    pub prefetch: u16,
    /// Partitions of the events and retry topics when this bus creates them (1 to 256);
    /// an existing topic keeps its own count.
    pub partitions: u16,
    /// Replicas of every topic this bus creates (1 for a single broker).
    pub replication_factor: u16,
    /// Longest wait to connect and create the events topic, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Longest wait for one broker operation (a produce and its acknowledgement, a
    /// commit), in milliseconds.
    pub operation_timeout_ms: u64,
    /// Longest a fetch waits at the broker for new records, in milliseconds.
    pub fetch_wait_ms: u64,
    /// A group member that sends no heartbeat for this long is dropped and its partitions
    /// go to the others, in milliseconds; heartbeats go every third of it. Also the
    /// rebalance timeout.
    pub session_timeout_ms: u64,
    /// How often a subscription commits the settled offsets, in milliseconds (and before a
    /// rebalance and when it ends).
    pub commit_interval_ms: u64,
}

impl Default for KafkaBusOptions {
    fn default() -> Self {
        Self {
            topic_prefix: "ferrobank".into(),
            retry: RetryPolicy::default(),
            prefetch: DEFAULT_PREFETCH,
            partitions: 8,
            replication_factor: 1,
            connect_timeout_ms: 5_000,
            operation_timeout_ms: 5_000,
            fetch_wait_ms: 250,
            session_timeout_ms: 10_000,
            commit_interval_ms: 100,
        }
    }
}

/// The Kafka [`EventBus`]; clones share the client and the type bindings.
#[derive(Clone)]
pub struct KafkaBus {
    shared: Arc<Shared>,
}

struct Shared {
    brokers: Vec<String>,
    options: KafkaBusOptions,
    client: Client,
    /// A connection of its own for publishing: a broker answers one connection's requests
    /// in order, so a produce behind the consumers' long-polling fetches would wait out
    /// their `fetch_wait_ms` (Kafka's producer and consumer are separate clients too).
    producer: Client,
    events_topic: String,
    events_partitions: i32,
    partitions: Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
    producer_partitions: Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
    /// Per consumer, the types it is bound to; shared by its subscriptions.
    bindings: Mutex<BTreeMap<String, Arc<Mutex<BTreeSet<String>>>>>,
    /// Consumers whose topics this bus created (what [`KafkaBus::teardown`] deletes).
    declared: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.shared.brokers)
            .field("options", &self.shared.options)
            .field("events_partitions", &self.shared.events_partitions)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn broker(context: &str, error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{context}: {error}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn timestamp(unix_ms: u64) -> DateTime<Utc> {
    i64::try_from(unix_ms).ok().and_then(DateTime::from_timestamp_millis).unwrap_or_default()
}

/// The brokers of a `kafka://host:port[,host:port...]` URL.
fn parse_brokers(url: &str) -> Result<Vec<String>, BusError> {
    let invalid = || {
        BusError::InvalidOptions(format!("{url:?} is not a kafka://host:port[,host:port...] URL"))
    };
    let list = url.strip_prefix("kafka://").ok_or_else(invalid)?.trim_end_matches('/');
    let brokers: Vec<String> = list
        .split(',')
        .map(str::trim)
        .map(|broker| match broker.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Ok(broker.to_owned())
            }
            _ => Err(invalid()),
        })
        .collect::<Result<_, _>>()?;
    if brokers.is_empty() { Err(invalid()) } else { Ok(brokers) }
}

/// Kafka's murmur2 (what its clients' default partitioner hashes keys with).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Kafka hashes the length as a Java int; keys here are at most 256 bytes.
    let mut h = SEED ^ u32::try_from(data.len()).unwrap_or(u32::MAX);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// `records` in order, cut into produce requests of at most [`MAX_PRODUCE_RECORDS`] and
/// about [`MAX_PRODUCE_BYTES`].
fn produce_chunks(records: Vec<(usize, Record)>) -> Vec<Vec<(usize, Record)>> {
    let mut chunks: Vec<Vec<(usize, Record)>> = Vec::new();
    let mut bytes = 0;
    for (i, record) in records {
        let size = record.value.as_ref().map_or(0, Vec::len);
        match chunks.last_mut() {
            Some(chunk)
                if chunk.len() < MAX_PRODUCE_RECORDS && bytes + size <= MAX_PRODUCE_BYTES =>
            {
                bytes += size;
                chunk.push((i, record));
            }
            _ => {
                bytes = size;
                chunks.push(vec![(i, record)]);
            }
        }
    }
    chunks
}

/// The partition of `key` among `partitions` (Kafka's default partitioner).
fn partition_of(key: &str, partitions: i32) -> i32 {
    let hash = i64::from(murmur2(key.as_bytes()) & 0x7fff_ffff);
    i32::try_from(hash % i64::from(partitions.max(1))).unwrap_or(0)
}

/// The names of one consumer's topics and groups.
#[derive(Debug, Clone)]
struct Names {
    consumer: String,
    retry: String,
    dlq: String,
    group: String,
    delivered_group: String,
}

impl Names {
    fn new(prefix: &str, consumer: &str) -> Self {
        Self {
            consumer: consumer.to_owned(),
            retry: format!("{prefix}.{consumer}.retry"),
            dlq: format!("{prefix}.{consumer}.dlq"),
            group: format!("{prefix}.{consumer}"),
            delivered_group: format!("{prefix}.{consumer}.delivered"),
        }
    }
}

fn header_u64(record: &Record, name: &str) -> Option<u64> {
    std::str::from_utf8(record.headers.get(name)?).ok()?.parse().ok()
}

impl KafkaBus {
    /// Connects to `url` (`kafka://host:9092[,host:9092...]`) and creates the events topic
    /// if it is missing; fails if the broker cannot be reached now or the options are out
    /// of bounds.
    pub async fn connect(url: &str, options: KafkaBusOptions) -> Result<Self, BusError> {
        options.retry.validate()?;
        let brokers = parse_brokers(url)?;
        let prefix = &options.topic_prefix;
        let prefix_ok = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_BYTES
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
        if !prefix_ok
            || !(1..=MAX_PREFETCH).contains(&options.prefetch)
            || !(1..=MAX_PARTITIONS).contains(&options.partitions)
            || options.replication_factor == 0
            || options.connect_timeout_ms == 0
            || options.operation_timeout_ms == 0
            || options.fetch_wait_ms == 0
            || options.fetch_wait_ms >= options.operation_timeout_ms
            || !(MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS)
                .contains(&options.session_timeout_ms)
            || !(1..=MAX_COMMIT_INTERVAL_MS).contains(&options.commit_interval_ms)
        {
            return Err(BusError::InvalidOptions(format!(
                "topic_prefix must be 1 to {MAX_PREFIX_BYTES} bytes of [a-z0-9_-], prefetch 1 to \
                 {MAX_PREFETCH}, partitions 1 to {MAX_PARTITIONS}, replication_factor and \
                 timeouts above 0, fetch_wait_ms below operation_timeout_ms, \
                 session_timeout_ms {MIN_SESSION_TIMEOUT_MS} to {MAX_SESSION_TIMEOUT_MS}, \
                 commit_interval_ms 1 to {MAX_COMMIT_INTERVAL_MS}"
            )));
        }
        let operation = Duration::from_millis(options.operation_timeout_ms);
        let connect_timeout = Duration::from_millis(options.connect_timeout_ms);
        let events_topic = format!("{prefix}.events");
        let connecting = async {
            let build = || {
                ClientBuilder::new(brokers.clone())
                    .client_id(CLIENT_ID)
                    .max_message_size(MAX_RESPONSE_BYTES)
                    .backoff_config(BackoffConfig {
                        deadline: Some(operation),
                        ..BackoffConfig::default()
                    })
                    .build()
            };
            let connect_error = |e| broker(&format!("connecting to {}", brokers.join(",")), e);
            let client = build().await.map_err(connect_error)?;
            let producer = build().await.map_err(connect_error)?;
            let events_partitions = ensure_topic(
                &client,
                &events_topic,
                options.partitions,
                options.replication_factor,
                operation,
            )
            .await?;
            Ok::<_, BusError>((client, producer, events_partitions))
        };
        let (client, producer, events_partitions) =
            tokio::time::timeout(connect_timeout, connecting).await.unwrap_or_else(|_| {
                Err(BusError::Unavailable(format!(
                    "connecting to {}: no answer within {connect_timeout:?}",
                    brokers.join(",")
                )))
            })?;
        Ok(Self {
            shared: Arc::new(Shared {
                brokers,
                options,
                client,
                producer,
                events_topic,
                events_partitions,
                partitions: Mutex::default(),
                producer_partitions: Mutex::default(),
                bindings: Mutex::default(),
                declared: Mutex::default(),
            }),
        })
    }

    /// The topic every event is published to.
    pub fn events_topic(&self) -> &str {
        &self.shared.events_topic
    }

    /// The consumers whose topics this bus created.
    pub fn declared_consumers(&self) -> Vec<String> {
        lock(&self.shared.declared).iter().cloned().collect()
    }

    /// Deletes `consumer`'s retry and dead-letter topics (its retries and dead letters with
    /// them). Its group offsets stay on the broker.
    pub async fn delete_consumer(&self, consumer: &str) -> Result<(), BusError> {
        validate_consumer(consumer)?;
        let names = Names::new(&self.shared.options.topic_prefix, consumer);
        for topic in [&names.retry, &names.dlq] {
            self.delete_topic(topic).await?;
        }
        lock(&self.shared.declared).remove(consumer);
        Ok(())
    }

    /// Deletes the topics of every consumer this bus created and the events topic.
    pub async fn teardown(&self) -> Result<(), BusError> {
        for consumer in self.declared_consumers() {
            self.delete_consumer(&consumer).await?;
        }
        self.delete_topic(&self.shared.events_topic).await
    }

    async fn delete_topic(&self, topic: &str) -> Result<(), BusError> {
        lock(&self.shared.partitions).retain(|(t, _), _| t != topic);
        lock(&self.shared.producer_partitions).retain(|(t, _), _| t != topic);
        let controller =
            self.shared.client.controller_client().map_err(|e| broker("controller", e))?;
        let timeout_ms =
            i32::try_from(self.shared.options.operation_timeout_ms).unwrap_or(i32::MAX);
        match self.timed("DeleteTopics", controller.delete_topic(topic, timeout_ms)).await {
            Ok(()) => Ok(()),
            Err(BusError::Unavailable(e)) if e.contains("UnknownTopicOrPartition") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn timed<T>(
        &self,
        context: &str,
        operation: impl Future<Output = Result<T, KafkaError>>,
    ) -> Result<T, BusError> {
        let timeout = Duration::from_millis(self.shared.options.operation_timeout_ms);
        // Boxed: rskafka's futures nest deep enough to overflow the compiler's layout queries.
        match tokio::time::timeout(timeout, Box::pin(operation)).await {
            Ok(result) => result.map_err(|e| broker(context, e)),
            Err(_) => {
                Err(BusError::Unavailable(format!("{context}: no answer within {timeout:?}")))
            }
        }
    }

    /// The (cached) client of one partition.
    async fn partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, BusError> {
        self.partition_on(&self.shared.client, &self.shared.partitions, topic, partition).await
    }

    /// A partition's client on the publishing connection.
    async fn producer_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, BusError> {
        let cache = &self.shared.producer_partitions;
        self.partition_on(&self.shared.producer, cache, topic, partition).await
    }

    async fn partition_on(
        &self,
        client: &Client,
        cache: &Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, BusError> {
        let key = (topic.to_owned(), partition);
        if let Some(client) = lock(cache).get(&key) {
            return Ok(client.clone());
        }
        let client = Arc::new(
            self.timed(
                "metadata",
                client.partition_client(topic, partition, UnknownTopicHandling::Retry),
            )
            .await?,
        );
        lock(cache).insert(key, client.clone());
        Ok(client)
    }

    /// The record of `event` on the events topic, and its partition (by subject).
    fn record_of(&self, event: &Event) -> Result<(i32, Record), BusError> {
        let body = event.to_json_bytes()?;
        let headers = BTreeMap::from([
            ("content-type".to_owned(), CLOUDEVENTS_JSON.as_bytes().to_vec()),
            (TYPE_HEADER.to_owned(), event.type_.as_bytes().to_vec()),
        ]);
        let record = Record {
            key: Some(event.subject.as_bytes().to_vec()),
            value: Some(body),
            headers,
            timestamp: timestamp(now_ms()),
        };
        Ok((partition_of(&event.subject, self.shared.events_partitions), record))
    }

    /// Produces one record and waits for `acks=all`; returns its offset.
    async fn produce(&self, topic: &str, partition: i32, record: Record) -> Result<i64, BusError> {
        let client = self.producer_partition(topic, partition).await?;
        let offsets =
            self.timed("produce", client.produce(vec![record], Compression::NoCompression)).await?;
        offsets.first().copied().ok_or_else(|| broker("produce", "no offset in the answer"))
    }

    /// The first and the next offset of a partition (`[earliest, high watermark)`).
    async fn bounds(&self, client: &PartitionClient) -> Result<(i64, i64), BusError> {
        let earliest = self.timed("ListOffsets", client.get_offset(OffsetAt::Earliest)).await?;
        // The high watermark from a fetch: some brokers answer ListOffsets(latest) with the
        // last offset rather than the next one.
        let (_, high) = self.timed("fetch", fetch(client, earliest, IMMEDIATE_WAIT_MS)).await?;
        Ok((earliest, high.unwrap_or(earliest)))
    }

    async fn topic_exists(&self, topic: &str) -> Result<bool, BusError> {
        let topics = self.timed("metadata", self.shared.client.list_topics()).await?;
        Ok(topics.iter().any(|t| t.name == topic))
    }

    /// Creates `consumer`'s topics if missing; returns the retry topic's partition count.
    async fn declare_consumer(&self, names: &Names) -> Result<i32, BusError> {
        let options = &self.shared.options;
        let operation = Duration::from_millis(options.operation_timeout_ms);
        let client = &self.shared.client;
        let retry_partitions = ensure_topic(
            client,
            &names.retry,
            options.partitions,
            options.replication_factor,
            operation,
        )
        .await?;
        ensure_topic(client, &names.dlq, 1, options.replication_factor, operation).await?;
        lock(&self.shared.declared).insert(names.consumer.clone());
        Ok(retry_partitions)
    }

    /// Writes a dead letter (confirmed) and updates the DLQ depth gauge.
    async fn dead_letter(
        &self,
        names: &Names,
        mut record: Record,
        attempt: u32,
        reason: DeadLetterReason,
    ) -> Result<(), BusError> {
        record.headers.insert(ATTEMPT_HEADER.into(), attempt.to_string().into_bytes());
        record.headers.insert(REASON_HEADER.into(), reason.as_str().as_bytes().to_vec());
        record.headers.remove(DUE_HEADER);
        record.timestamp = timestamp(now_ms());
        let offset = self.produce(&names.dlq, 0, record).await?;
        METRICS.dead_lettered(&names.consumer, reason);
        if let Ok(client) = self.partition(&names.dlq, 0).await
            && let Ok(earliest) =
                self.timed("ListOffsets", client.get_offset(OffsetAt::Earliest)).await
        {
            METRICS
                .dead_letters(&names.consumer, u64::try_from(offset + 1 - earliest).unwrap_or(0));
        }
        Ok(())
    }
}

/// Creates `topic` unless it exists; returns its partition count.
async fn ensure_topic(
    client: &Client,
    topic: &str,
    partitions: u16,
    replication_factor: u16,
    timeout: Duration,
) -> Result<i32, BusError> {
    let existing = |topics: &[rskafka::topic::Topic]| {
        topics
            .iter()
            .find(|t| t.name == topic)
            .and_then(|t| i32::try_from(t.partitions.len()).ok())
            .filter(|count| *count > 0)
    };
    let topics = client.list_topics().await.map_err(|e| broker("metadata", e))?;
    if let Some(count) = existing(&topics) {
        return Ok(count);
    }
    let controller = client.controller_client().map_err(|e| broker("controller", e))?;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let replication = i16::try_from(replication_factor).unwrap_or(i16::MAX);
    match controller.create_topic(topic, i32::from(partitions), replication, timeout_ms).await {
        Ok(()) => {}
        Err(KafkaError::ServerError {
            protocol_error: ProtocolError::TopicAlreadyExists, ..
        }) => {}
        Err(e) => return Err(broker(&format!("creating topic {topic}"), e)),
    }
    let topics = client.list_topics().await.map_err(|e| broker("metadata", e))?;
    Ok(existing(&topics).unwrap_or(i32::from(partitions)))
}

#[async_trait]
impl EventBus for KafkaBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let (partition, record) = self.record_of(event)?;
        self.produce(&self.shared.events_topic, partition, record).await?;
        METRICS.published(&event.type_);
        Ok(())
    }

    /// One produce request per partition and chunk of [`MAX_PRODUCE_RECORDS`], partitions
    /// side by side: a subject's events share its partition and keep their order in it. A
    /// failed chunk fails the partition's later chunks unsent (their subjects may be in
    /// it), and an event that cannot be encoded fails its subject's later events.
    async fn publish_all(&self, events: &[Event]) -> Vec<Result<(), BusError>> {
        let mut results: Vec<Result<(), BusError>> =
            events.iter().map(|_| Err(not_attempted())).collect();
        let mut broken: BTreeSet<&str> = BTreeSet::new();
        let mut by_partition: BTreeMap<i32, Vec<(usize, Record)>> = BTreeMap::new();
        for (i, event) in events.iter().enumerate() {
            if broken.contains(event.subject.as_str()) {
                continue;
            }
            match self.record_of(event) {
                Ok((partition, record)) => {
                    by_partition.entry(partition).or_default().push((i, record))
                }
                Err(error) => {
                    broken.insert(event.subject.as_str());
                    results[i] = Err(error);
                }
            }
        }
        let produced = by_partition.into_iter().map(|(partition, records)| async move {
            let mut outcomes = Vec::with_capacity(records.len());
            for chunk in produce_chunks(records) {
                let (indices, chunk): (Vec<usize>, Vec<Record>) = chunk.into_iter().unzip();
                let client = self.producer_partition(&self.shared.events_topic, partition).await;
                let sent = match client {
                    Ok(client) => self
                        .timed("produce", client.produce(chunk, Compression::NoCompression))
                        .await
                        .map(|_| ()),
                    Err(error) => Err(error),
                };
                let failed = sent.is_err();
                match sent {
                    Ok(()) => outcomes.extend(indices.into_iter().map(|i| (i, Ok(())))),
                    Err(error) => {
                        let reason = error.to_string();
                        outcomes.extend(
                            indices
                                .into_iter()
                                .map(|i| (i, Err(BusError::Unavailable(reason.clone())))),
                        );
                    }
                }
                if failed {
                    break; // the rest stays `not_attempted`
                }
            }
            outcomes
        });
        for outcomes in futures_util::future::join_all(produced).await {
            for (i, outcome) in outcomes {
                if outcome.is_ok() {
                    METRICS.published(&events[i].type_);
                }
                results[i] = outcome;
            }
        }
        results
    }

    async fn subscribe(
        &self,
        consumer: &str,
        types: &[&str],
    ) -> Result<Box<dyn Subscription>, BusError> {
        validate_subscription(consumer, types)?;
        let names = Arc::new(Names::new(&self.shared.options.topic_prefix, consumer));
        let retry_partitions = self.declare_consumer(&names).await?;
        let bound = lock(&self.shared.bindings).entry(consumer.to_owned()).or_default().clone();
        lock(&bound).extend(types.iter().map(|t| (*t).to_owned()));

        let options = &self.shared.options;
        // A connection of its own: a JoinGroup may wait at the coordinator for a whole
        // rebalance, which must not hold up other subscriptions' commits.
        let groups = Arc::new(Groups::new(
            self.shared.brokers.clone(),
            Duration::from_millis(options.operation_timeout_ms + options.session_timeout_ms),
        ));
        let mut topics = vec![(self.shared.events_topic.clone(), self.shared.events_partitions)];
        if retry_partitions > 0 {
            topics.push((names.retry.clone(), retry_partitions));
        }
        let shared = Arc::new(SubscriptionShared {
            alive: AtomicBool::new(true),
            state: Mutex::new(SubscriptionState {
                unsettled: 0,
                epoch: 0,
                revoking: false,
                offsets: Vec::new(),
            }),
            member: Mutex::new(Member { id: String::new(), generation: -1 }),
            settled: Notify::new(),
            reassigned: Notify::new(),
            closed: Notify::new(),
            retry_partitions: retry_partitions.max(1),
        });
        let membership = Membership {
            bus: self.clone(),
            names: names.clone(),
            groups: groups.clone(),
            shared: shared.clone(),
            topics,
        };
        if let Err(e) = membership.join().await {
            membership.leave().await;
            return Err(e);
        }
        if let Ok(client) = self.partition(&names.dlq, 0).await
            && let Ok((earliest, high)) = self.bounds(&client).await
        {
            METRICS.dead_letters(consumer, u64::try_from(high - earliest).unwrap_or(0));
        }
        tokio::spawn(membership.run());
        let prefetch = self.shared.options.prefetch;
        Ok(Box::new(KafkaSubscription {
            bus: self.clone(),
            names,
            groups,
            bound,
            cursors: Vec::new(),
            // Not an epoch: the first `next` builds the cursors of the assignment.
            epoch: u64::MAX,
            fetches: tokio::task::JoinSet::new(),
            shared,
            prefetch,
            turn: 0,
        }))
    }

    async fn dead_letters(&self, consumer: &str, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        validate_consumer(consumer)?;
        let names = Names::new(&self.shared.options.topic_prefix, consumer);
        if !self.topic_exists(&names.dlq).await? {
            return Ok(Vec::new());
        }
        let client = self.partition(&names.dlq, 0).await?;
        let (earliest, high) = self.bounds(&client).await?;
        METRICS.dead_letters(consumer, u64::try_from(high - earliest).unwrap_or(0));
        let max = max.min(MAX_DEAD_LETTERS_READ);
        let mut letters = Vec::new();
        let mut position = earliest;
        while letters.len() < max && position < high {
            let (records, _) =
                self.timed("fetch", fetch(&client, position, IMMEDIATE_WAIT_MS)).await?;
            if records.is_empty() {
                break;
            }
            for RecordAndOffset { record, offset } in records {
                position = offset + 1;
                if letters.len() < max && offset < high {
                    letters.push(read_dead_letter(&record));
                }
            }
        }
        Ok(letters)
    }
}

/// Records from an offset on, and the high watermark when the broker named it.
type Fetched = Result<(Vec<RecordAndOffset>, Option<i64>), KafkaError>;

/// Fetches from `offset` on, waiting up to `wait_ms` for records. An answer without the
/// topic (what some brokers send for a partition never written to) is no records.
async fn fetch(client: &PartitionClient, offset: i64, wait_ms: i32) -> Fetched {
    match client.fetch_records(offset, 1..MAX_FETCH_BYTES, wait_ms).await {
        Ok((records, high)) => Ok((records, Some(high))),
        Err(KafkaError::InvalidResponse(message)) if message.ends_with("got 0") => {
            Ok((Vec::new(), None))
        }
        Err(e) => Err(e),
    }
}

fn read_dead_letter(record: &Record) -> DeadLetter {
    let event = record.value.as_deref().and_then(|body| Event::from_json_bytes(body).ok());
    let reason = record
        .headers
        .get(REASON_HEADER)
        .and_then(|name| std::str::from_utf8(name).ok())
        .and_then(DeadLetterReason::parse)
        .unwrap_or(if event.is_some() {
            DeadLetterReason::Rejected
        } else {
            DeadLetterReason::Malformed
        });
    let attempt =
        header_u64(record, ATTEMPT_HEADER).and_then(|a| u32::try_from(a).ok()).unwrap_or(1).max(1);
    DeadLetter { event, attempt, reason }
}

/// Reading position and fetched-but-not-yet-delivered records of one assigned partition.
struct Cursor {
    client: Arc<PartitionClient>,
    retry: bool,
    /// The next offset to fetch.
    position: i64,
    buffer: VecDeque<RecordAndOffset>,
    /// Offsets below it were delivered before this assignment started.
    redelivered_below: i64,
    /// A fetch of this partition is under way.
    fetching: bool,
}

/// The settlement bookkeeping of one assigned partition.
#[derive(Debug)]
struct Offsets {
    topic: String,
    partition: i32,
    /// Delivered, not yet settled.
    in_flight: BTreeSet<i64>,
    /// The next offset not yet delivered or skipped.
    handed: i64,
    /// What the group holds.
    committed: i64,
    /// What the delivered group holds.
    delivered_mark: i64,
}

impl Offsets {
    /// How far the group's offset may move: up to the first unsettled delivery.
    fn committable(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.handed).min(self.handed)
    }
}

#[derive(Debug)]
struct SubscriptionState {
    unsettled: usize,
    /// Bumped on every change of assignment: deliveries of an earlier epoch can no longer be
    /// settled here (their partitions may be someone else's now).
    epoch: u64,
    /// A rebalance is under way: nothing more is handed out until the next assignment.
    revoking: bool,
    /// The assigned partitions, by cursor index.
    offsets: Vec<Offsets>,
}

impl SubscriptionState {
    /// The bookkeeping of cursor `index` if the assignment is still `epoch`.
    fn offsets(&mut self, epoch: u64, index: usize) -> Option<&mut Offsets> {
        if self.epoch == epoch { self.offsets.get_mut(index) } else { None }
    }
}

/// This subscription's identity in its consumer group.
#[derive(Debug, Clone)]
struct Member {
    /// Given by the coordinator; empty before the first join.
    id: String,
    /// The generation of the current assignment; -1 before the first one.
    generation: i32,
}

/// What a subscription shares with its unsettled deliveries and its membership task.
#[derive(Debug)]
struct SubscriptionShared {
    /// False once the subscription is dropped: its deliveries can no longer be settled.
    alive: AtomicBool,
    state: Mutex<SubscriptionState>,
    member: Mutex<Member>,
    /// Woken on every settlement (a `next` waiting for prefetch room, a revocation waiting
    /// for in-flight deliveries).
    settled: Notify,
    /// Woken when the membership task starts a rebalance or hands over an assignment.
    reassigned: Notify,
    /// Woken once, when the subscription is dropped (the membership task leaves the group).
    closed: Notify,
    /// Partitions of the consumer's retry topic (where a retried event is keyed to).
    retry_partitions: i32,
}

impl SubscriptionShared {
    /// Commits, as the current member, every assigned partition whose settled prefix grew.
    /// False when the coordinator refused the generation: a rebalance is under way. Called
    /// only by the membership task, so never across a change of assignment.
    async fn commit(&self, groups: &Groups, names: &Names) -> Result<bool, BusError> {
        let (epoch, pending): (u64, Vec<(String, i32, i64)>) = {
            let state = lock(&self.state);
            let pending = state
                .offsets
                .iter()
                .filter(|o| o.committable() > o.committed)
                .map(|o| (o.topic.clone(), o.partition, o.committable()))
                .collect();
            (state.epoch, pending)
        };
        if pending.is_empty() {
            return Ok(true);
        }
        let member = lock(&self.member).clone();
        if !groups.commit(&names.group, Some(&member), &pending).await? {
            return Ok(false);
        }
        let mut state = lock(&self.state);
        if state.epoch == epoch {
            for (topic, partition, offset) in pending {
                if let Some(o) =
                    state.offsets.iter_mut().find(|o| o.topic == topic && o.partition == partition)
                {
                    o.committed = o.committed.max(offset);
                }
            }
        }
        Ok(true)
    }
}

/// What the members of a consumer's group subscribe to (ConsumerProtocol), one assignor.
const PROTOCOL_TYPE: &str = "consumer";
/// The assignor: Kafka's range assignor (see [`assign_range`]).
const ASSIGNOR: &str = "range";
/// Pause before joining again after the coordinator asked for it (a rebalance that other
/// members have not finished), in milliseconds.
const REJOIN_PAUSE_MS: u64 = 100;
/// How many session timeouts a join may take before the subscription gives up.
const JOIN_SESSIONS: u32 = 3;

/// A subscription's membership in its consumer group, run by a task of its own: joins,
/// heartbeats every third of the session timeout, commits the settled offsets every
/// `commit_interval_ms`, rejoins when the coordinator rebalances, and on drop commits a
/// last time and leaves.
struct Membership {
    bus: KafkaBus,
    names: Arc<Names>,
    groups: Arc<Groups>,
    shared: Arc<SubscriptionShared>,
    /// The topics every member subscribes to, with their partition counts.
    topics: Vec<(String, i32)>,
}

impl Membership {
    async fn run(self) {
        let options = &self.bus.shared.options;
        let mut commit_tick =
            tokio::time::interval(Duration::from_millis(options.commit_interval_ms));
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat_tick =
            tokio::time::interval(Duration::from_millis((options.session_timeout_ms / 3).max(1)));
        heartbeat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let rejoin = tokio::select! {
                () = self.shared.closed.notified() => break,
                _ = commit_tick.tick() => !self.commit().await,
                _ = heartbeat_tick.tick() => self.heartbeat().await,
            };
            if !self.shared.alive.load(Ordering::SeqCst) {
                break;
            }
            if rejoin {
                let rebalanced = tokio::select! {
                    () = self.shared.closed.notified() => break,
                    rebalanced = self.rebalance() => rebalanced,
                };
                if let Err(e) = rebalanced {
                    tracing::warn!(group = %self.names.group, error = %e, "rejoining the consumer group failed; trying again");
                    lock(&self.shared.member).id.clear();
                    heartbeat_tick.reset_immediately();
                }
            }
        }
        self.commit().await;
        self.leave().await;
    }

    /// Commits the settled offsets; false when the coordinator refused this generation.
    async fn commit(&self) -> bool {
        match self.shared.commit(&self.groups, &self.names).await {
            Ok(committed) => committed,
            Err(e) => {
                tracing::warn!(group = %self.names.group, error = %e, "committing offsets failed");
                true
            }
        }
    }

    /// One heartbeat; true when the member must join again.
    async fn heartbeat(&self) -> bool {
        let member = lock(&self.shared.member).clone();
        if member.id.is_empty() {
            return true;
        }
        match self.groups.heartbeat(&self.names.group, member.generation, &member.id).await {
            Ok(NONE) => false,
            Ok(UNKNOWN_MEMBER_ID) => {
                lock(&self.shared.member).id.clear();
                true
            }
            Ok(REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION) => true,
            Ok(code) => {
                tracing::warn!(group = %self.names.group, code, "heartbeat refused");
                false
            }
            Err(e) => {
                tracing::warn!(group = %self.names.group, error = %e, "heartbeat failed");
                false
            }
        }
    }

    /// Leaves the group (best effort: otherwise the coordinator drops the member after the
    /// session timeout).
    async fn leave(&self) {
        let id = std::mem::take(&mut lock(&self.shared.member).id);
        if !id.is_empty()
            && let Err(e) = self.groups.leave(&self.names.group, &id).await
        {
            tracing::warn!(group = %self.names.group, error = %e, "leaving the consumer group failed");
        }
    }

    /// The eager protocol: stop handing out, let the deliveries in flight settle (for half
    /// a session at most), commit them, give up every partition, join again.
    async fn rebalance(&self) -> Result<(), BusError> {
        lock(&self.shared.state).revoking = true;
        self.shared.reassigned.notify_waiters();
        let patience = Duration::from_millis(self.bus.shared.options.session_timeout_ms / 2);
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let settled = self.shared.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if lock(&self.shared.state).unsettled == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                break;
            }
        }
        // Refused when the generation is already over: then what was settled comes again
        // to the partitions' next owner, which consumers de-duplicate.
        self.commit().await;
        {
            let mut state = lock(&self.shared.state);
            state.offsets.clear();
            state.unsettled = 0;
            state.epoch += 1;
        }
        self.shared.settled.notify_waiters();
        self.join().await
    }

    /// Joins the group (again), takes the leader's assignment and hands it to the
    /// subscription.
    async fn join(&self) -> Result<(), BusError> {
        let options = &self.bus.shared.options;
        let group = &self.names.group;
        let session_ms = i32::try_from(options.session_timeout_ms).unwrap_or(i32::MAX);
        let metadata = encode_subscription(&self.topics)?;
        let patience = Duration::from_millis(options.session_timeout_ms) * JOIN_SESSIONS;
        let deadline = tokio::time::Instant::now() + patience;
        let (mut member_id, previous) = {
            let member = lock(&self.shared.member);
            (member.id.clone(), member.generation)
        };
        let mut joined_afresh = false;
        let pause = || tokio::time::sleep(Duration::from_millis(REJOIN_PAUSE_MS));
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(BusError::Unavailable(format!(
                    "consumer group {group}: no assignment within {patience:?}"
                )));
            }
            let join =
                self.groups.join(group, session_ms, session_ms, &member_id, &metadata).await?;
            match join.code {
                NONE => {}
                MEMBER_ID_REQUIRED => {
                    member_id = join.member_id;
                    lock(&self.shared.member).id.clone_from(&member_id);
                    continue;
                }
                UNKNOWN_MEMBER_ID => {
                    member_id.clear();
                    continue;
                }
                REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION => {
                    pause().await;
                    continue;
                }
                code if COORDINATOR_ERRORS.contains(&code) => {
                    pause().await;
                    continue;
                }
                code => {
                    return Err(BusError::Unavailable(format!(
                        "JoinGroup {group}: error code {code}"
                    )));
                }
            }
            member_id = join.member_id;
            lock(&self.shared.member).id.clone_from(&member_id);
            if previous >= 0 && join.generation <= previous && !joined_afresh {
                // Asked to rebalance, yet the coordinator kept the generation: tansu 0.6
                // does so after dropping a member whose session ran out, keeping the old
                // assignment (the dropped member's partitions with nobody). Leaving and
                // joining as a new member makes it start a generation.
                joined_afresh = true;
                self.groups.leave(group, &member_id).await?;
                member_id.clear();
                continue;
            }
            // Counts as contact at coordinators that refresh a session only on heartbeats
            // (tansu), so that a slow join does not time the member out.
            self.groups.heartbeat(group, join.generation, &member_id).await?;
            let assignments = if join.leader == member_id {
                assign_range(&join.members, &self.topics)?
            } else {
                Vec::new()
            };
            let (code, assignment) =
                self.groups.sync(group, join.generation, &member_id, &assignments).await?;
            match code {
                NONE => {
                    let member = Member { id: member_id, generation: join.generation };
                    let partitions = decode_assignment(&assignment)?;
                    return self.take(member, partitions).await;
                }
                UNKNOWN_MEMBER_ID => member_id.clear(),
                REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION => pause().await,
                code if COORDINATOR_ERRORS.contains(&code) => pause().await,
                code => {
                    return Err(BusError::Unavailable(format!(
                        "SyncGroup {group}: error code {code}"
                    )));
                }
            }
        }
    }

    /// Starts consuming `partitions` as `member`: reads the committed offsets (committing
    /// a start for every partition the group has never read: the retry topic from its
    /// beginning, the events from now on) and hands them to the subscription.
    async fn take(&self, member: Member, partitions: Vec<(String, i32)>) -> Result<(), BusError> {
        let all: Vec<(String, Vec<i32>)> = self
            .topics
            .iter()
            .map(|(topic, count)| (topic.clone(), (0..*count).collect()))
            .collect();
        let committed = self.groups.fetch(&self.names.group, &all).await?;
        let delivered = self.groups.fetch(&self.names.delivered_group, &all).await?;
        let mut starts = HashMap::new();
        let mut first_commit = Vec::new();
        for (topic, partitions) in &all {
            for &partition in partitions {
                let key = (topic.clone(), partition);
                let start = match committed.get(&key).copied().filter(|offset| *offset >= 0) {
                    Some(offset) => offset,
                    None => {
                        let client = self.bus.partition(topic, partition).await?;
                        let (earliest, high) = self.bus.bounds(&client).await?;
                        let start = if *topic == self.names.retry { earliest } else { high };
                        first_commit.push((topic.clone(), partition, start));
                        start
                    }
                };
                starts.insert(key, start);
            }
        }
        if !first_commit.is_empty()
            && !self.groups.commit(&self.names.group, Some(&member), &first_commit).await?
        {
            return Err(BusError::Unavailable(format!(
                "consumer group {}: the generation ended while starting",
                self.names.group
            )));
        }
        let offsets = partitions
            .into_iter()
            .filter_map(|(topic, partition)| {
                let key = (topic, partition);
                let start = *starts.get(&key)?;
                let mark = delivered.get(&key).copied().unwrap_or(-1).max(start);
                Some(Offsets {
                    topic: key.0,
                    partition,
                    in_flight: BTreeSet::new(),
                    handed: start,
                    committed: start,
                    delivered_mark: mark,
                })
            })
            .collect();
        tracing::debug!(group = %self.names.group, member = %member.id, generation = member.generation, "assigned");
        *lock(&self.shared.member) = member;
        {
            let mut state = lock(&self.shared.state);
            state.offsets = offsets;
            state.unsettled = 0;
            state.revoking = false;
            state.epoch += 1;
        }
        self.shared.reassigned.notify_waiters();
        self.shared.settled.notify_waiters();
        Ok(())
    }
}

/// ConsumerProtocol subscription (version 0): the topics, no user data.
fn encode_subscription(topics: &[(String, i32)]) -> Result<Vec<u8>, BusError> {
    let mut w = Writer::default();
    w.i16(0).count(topics.len())?;
    for (topic, _) in topics {
        w.string(topic)?;
    }
    w.i32(-1);
    Ok(w.0)
}

fn decode_subscription(metadata: &[u8]) -> Result<Vec<String>, BusError> {
    let mut r = Reader(metadata);
    let _version = r.i16()?;
    (0..r.count()?).map(|_| Ok(r.string()?.unwrap_or_default())).collect()
}

/// ConsumerProtocol assignment (version 0): partitions by topic, no user data.
fn encode_assignment(partitions: &BTreeMap<String, Vec<i32>>) -> Result<Vec<u8>, BusError> {
    let mut w = Writer::default();
    w.i16(0).count(partitions.len())?;
    for (topic, numbers) in partitions {
        w.string(topic)?.count(numbers.len())?;
        for number in numbers {
            w.i32(*number);
        }
    }
    w.i32(-1);
    Ok(w.0)
}

/// The partitions of an assignment; none when it is empty (a member left without any).
fn decode_assignment(assignment: &[u8]) -> Result<Vec<(String, i32)>, BusError> {
    if assignment.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Reader(assignment);
    let _version = r.i16()?;
    let mut partitions = Vec::new();
    for _ in 0..r.count()? {
        let topic = r.string()?.unwrap_or_default();
        for _ in 0..r.count()? {
            partitions.push((topic.clone(), r.i32()?));
        }
    }
    Ok(partitions)
}

/// Kafka's range assignor, run by the group's leader: for each topic, its partitions in
/// contiguous ranges over the members subscribed to it (sorted by member id), the first
/// members taking one more when the count does not divide. Returns each member's encoded
/// assignment.
fn assign_range(
    members: &[(String, Vec<u8>)],
    topics: &[(String, i32)],
) -> Result<Vec<(String, Vec<u8>)>, BusError> {
    let mut subscriptions = Vec::with_capacity(members.len());
    for (id, metadata) in members {
        subscriptions.push((id.clone(), decode_subscription(metadata)?));
    }
    subscriptions.sort();
    let mut assigned: BTreeMap<String, BTreeMap<String, Vec<i32>>> =
        subscriptions.iter().map(|(id, _)| (id.clone(), BTreeMap::new())).collect();
    for (topic, count) in topics {
        let subscribers: Vec<&String> =
            subscriptions.iter().filter(|(_, t)| t.contains(topic)).map(|(id, _)| id).collect();
        let Ok(n) = i32::try_from(subscribers.len()) else { continue };
        if n == 0 {
            continue;
        }
        let (each, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, member) in subscribers.into_iter().enumerate() {
            let take = each + i32::from(i32::try_from(i).is_ok_and(|i| i < extra));
            if let Some(topics) = assigned.get_mut(member) {
                topics.insert(topic.clone(), (next..next + take).collect());
            }
            next += take;
        }
    }
    assigned.into_iter().map(|(id, partitions)| Ok((id, encode_assignment(&partitions)?))).collect()
}

/// One consumer's reader of the partitions of the events topic and its retry topic that
/// the group assigned to it.
struct KafkaSubscription {
    bus: KafkaBus,
    names: Arc<Names>,
    groups: Arc<Groups>,
    bound: Arc<Mutex<BTreeSet<String>>>,
    /// The assigned partitions of `epoch`.
    cursors: Vec<Cursor>,
    epoch: u64,
    /// At most one fetch per partition, started as soon as its buffer runs low, so that
    /// the next records are on their way while the buffered ones are handed out.
    fetches: tokio::task::JoinSet<(u64, usize, FetchOutcome)>,
    shared: Arc<SubscriptionShared>,
    prefetch: u16,
    /// Where the next look for a ready record starts (partitions take turns).
    turn: usize,
}

/// A fetch's answer, or that it timed out.
type FetchOutcome = Result<Fetched, tokio::time::error::Elapsed>;

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("group", &self.names.group)
            .field("partitions", &self.cursors.len())
            .finish_non_exhaustive()
    }
}

impl Drop for KafkaSubscription {
    /// The membership task commits what is settled and leaves the group; the unsettled
    /// deliveries come again to whichever member takes their partitions.
    fn drop(&mut self) {
        self.shared.alive.store(false, Ordering::SeqCst);
        self.shared.settled.notify_waiters();
        self.shared.closed.notify_one();
    }
}

/// What to do with the record at the head of a partition.
enum Head {
    /// Not for this consumer (a type it is not bound to): pass over it.
    Skip,
    /// Not a valid event: to the dead-letter topic.
    Malformed(u32),
    /// A retry not yet due.
    Wait(u64),
    /// Deliver it.
    Deliver(Box<Event>, u32),
}

/// A partition's buffer is topped up by a new fetch when it holds fewer records.
const REFILL_BELOW_RECORDS: usize = 512;

impl KafkaSubscription {
    fn classify(&self, cursor: &Cursor, record: &Record, now: u64) -> Head {
        let attempt = header_u64(record, ATTEMPT_HEADER)
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(1)
            .max(1);
        if cursor.retry {
            if let Some(due) = header_u64(record, DUE_HEADER).filter(|due| *due > now) {
                return Head::Wait(due);
            }
        } else if let Some(type_) = record.headers.get(TYPE_HEADER)
            && !lock(&self.bound).iter().any(|bound| bound.as_bytes() == type_.as_slice())
        {
            return Head::Skip;
        }
        match record.value.as_deref().map(Event::from_json_bytes) {
            Some(Ok(event)) if cursor.retry || lock(&self.bound).contains(&event.type_) => {
                Head::Deliver(Box::new(event), attempt)
            }
            Some(Ok(_)) => Head::Skip,
            _ => Head::Malformed(attempt),
        }
    }

    /// Rebuilds the cursors for the assignment of `epoch`; stops the old fetches.
    async fn rebuild(&mut self, epoch: u64) -> Result<(), BusError> {
        self.fetches.abort_all();
        self.fetches = tokio::task::JoinSet::new();
        self.cursors.clear();
        let assigned: Vec<(String, i32, i64, i64)> = {
            let state = lock(&self.shared.state);
            if state.epoch != epoch {
                return Ok(());
            }
            state
                .offsets
                .iter()
                .map(|o| (o.topic.clone(), o.partition, o.handed, o.delivered_mark))
                .collect()
        };
        let mut cursors = Vec::with_capacity(assigned.len());
        for (topic, partition, start, mark) in assigned {
            cursors.push(Cursor {
                client: self.bus.partition(&topic, partition).await?,
                retry: topic == self.names.retry,
                position: start,
                buffer: VecDeque::new(),
                redelivered_below: mark,
                fetching: false,
            });
        }
        self.cursors = cursors;
        self.epoch = epoch;
        self.turn = 0;
        Ok(())
    }

    /// Marks the head of cursor `index` as passed (skipped or delivered); `None` when the
    /// assignment is being revoked and a delivery may not be handed out any more.
    fn pass(&mut self, index: usize, delivered: bool) -> Option<RecordAndOffset> {
        let mut state = lock(&self.shared.state);
        if delivered && state.revoking {
            return None;
        }
        let offset = self.cursors[index].buffer.front()?.offset;
        let offsets = state.offsets(self.epoch, index)?;
        offsets.handed = offsets.handed.max(offset + 1);
        if delivered {
            offsets.in_flight.insert(offset);
        }
        if delivered {
            state.unsettled += 1;
        }
        self.cursors[index].buffer.pop_front()
    }

    /// The next deliverable record among the buffers, passing over what is not for this
    /// consumer; `Err(Some(due))` when only retries not yet due are buffered.
    async fn take_ready(&mut self) -> Result<Result<Delivery, Option<u64>>, BusError> {
        let mut earliest_due: Option<u64> = None;
        let count = self.cursors.len();
        for step in 0..count {
            let index = (self.turn + step) % count;
            while let Some(head) = self.cursors[index].buffer.front() {
                let offset = head.offset;
                match self.classify(&self.cursors[index], &head.record, now_ms()) {
                    Head::Skip => {
                        if self.pass(index, false).is_none() {
                            return Ok(Err(None));
                        }
                    }
                    Head::Wait(due) => {
                        earliest_due = Some(earliest_due.map_or(due, |d| d.min(due)));
                        break;
                    }
                    Head::Malformed(attempt) => {
                        tracing::warn!(
                            group = %self.names.group,
                            offset,
                            "not a valid event: moved to the dead-letter topic"
                        );
                        let record = head.record.clone();
                        self.bus
                            .dead_letter(&self.names, record, attempt, DeadLetterReason::Malformed)
                            .await?;
                        if self.pass(index, false).is_none() {
                            return Ok(Err(None));
                        }
                    }
                    Head::Deliver(event, attempt) => {
                        self.mark_delivered(index, offset).await?;
                        let Some(taken) = self.pass(index, true) else { return Ok(Err(None)) };
                        self.turn = (index + 1) % count;
                        METRICS.delivered(&self.names.consumer);
                        let settle = KafkaSettle {
                            bus: self.bus.clone(),
                            names: self.names.clone(),
                            shared: self.shared.clone(),
                            epoch: self.epoch,
                            index,
                            offset,
                            attempt,
                            record: taken.record,
                        };
                        let redelivered = offset < self.cursors[index].redelivered_below;
                        return Ok(Ok(Delivery::new(
                            *event,
                            attempt,
                            redelivered,
                            Box::new(settle),
                        )));
                    }
                }
            }
        }
        Ok(Err(earliest_due))
    }

    /// Records in the delivered group that `offset` is handed out, before it is. One
    /// commit covers the buffered records up to `prefetch` ahead, so that it is not a
    /// round trip per delivery; a subscription that ends may thus mark a few records
    /// `redelivered` that it never handed out.
    async fn mark_delivered(&self, index: usize, offset: i64) -> Result<(), BusError> {
        let (topic, partition, mark) = {
            let mut state = lock(&self.shared.state);
            let Some(o) = state.offsets(self.epoch, index) else { return Ok(()) };
            (o.topic.clone(), o.partition, o.delivered_mark)
        };
        if offset < mark {
            return Ok(());
        }
        let upto = (offset + 1 + i64::from(self.prefetch))
            .min(self.cursors[index].position)
            .max(offset + 1);
        self.groups.commit(&self.names.delivered_group, None, &[(topic, partition, upto)]).await?;
        let mut state = lock(&self.shared.state);
        if let Some(o) = state.offsets(self.epoch, index) {
            o.delivered_mark = o.delivered_mark.max(upto);
        }
        Ok(())
    }

    /// Starts a fetch for every partition without one whose buffer runs low.
    fn start_fetches(&mut self) {
        let wait_ms = i32::try_from(self.bus.shared.options.fetch_wait_ms).unwrap_or(i32::MAX);
        let wait = Duration::from_millis(self.bus.shared.options.fetch_wait_ms);
        let timeout = Duration::from_millis(self.bus.shared.options.operation_timeout_ms);
        let epoch = self.epoch;
        for (index, cursor) in self.cursors.iter_mut().enumerate() {
            if cursor.fetching || cursor.buffer.len() >= REFILL_BELOW_RECORDS {
                continue;
            }
            cursor.fetching = true;
            let (client, position) = (cursor.client.clone(), cursor.position);
            self.fetches.spawn(async move {
                let started = tokio::time::Instant::now();
                let fetched =
                    tokio::time::timeout(timeout, fetch(&client, position, wait_ms)).await;
                // A broker that answers an empty partition at once (not after the fetch
                // wait) is not asked again before the wait is over.
                if matches!(&fetched, Ok(Ok((records, _))) if records.is_empty()) {
                    tokio::time::sleep_until(started + wait).await;
                }
                (epoch, index, fetched)
            });
        }
    }

    fn take_fetched(
        &mut self,
        joined: Result<(u64, usize, FetchOutcome), tokio::task::JoinError>,
    ) -> Result<(), BusError> {
        let (epoch, index, fetched) = joined.map_err(|e| broker("fetch", e))?;
        if epoch != self.epoch {
            return Ok(());
        }
        let (records, _high) = fetched
            .map_err(|_| BusError::Unavailable("fetch: no answer in time".into()))?
            .map_err(|e| broker("fetch", e))?;
        let cursor = &mut self.cursors[index];
        cursor.fetching = false;
        let fresh = records.into_iter().filter(|r| r.offset >= cursor.position);
        cursor.buffer.extend(fresh);
        if let Some(last) = cursor.buffer.back() {
            cursor.position = cursor.position.max(last.offset + 1);
        }
        Ok(())
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            // Registered before looking, so that a settlement or a reassignment between the
            // look and the wait wakes us.
            let shared = self.shared.clone();
            let settled = shared.settled.notified();
            let reassigned = shared.reassigned.notified();
            tokio::pin!(settled, reassigned);
            settled.as_mut().enable();
            reassigned.as_mut().enable();
            let (epoch, revoking, unsettled) = {
                let state = lock(&shared.state);
                (state.epoch, state.revoking, state.unsettled)
            };
            if epoch != self.epoch {
                Box::pin(self.rebuild(epoch)).await?;
                continue;
            }
            if revoking || self.cursors.is_empty() {
                // A rebalance, or a member with no partition (more members than
                // partitions): wait for the next assignment.
                reassigned.await;
                continue;
            }
            if unsettled >= usize::from(self.prefetch) {
                tokio::select! {
                    () = &mut settled => {}
                    () = &mut reassigned => {}
                }
                continue;
            }
            while let Some(joined) = self.fetches.try_join_next() {
                self.take_fetched(joined)?;
            }
            self.start_fetches();
            let due = match Box::pin(self.take_ready()).await? {
                Ok(delivery) => return Ok(delivery),
                Err(due) => due,
            };
            self.start_fetches();
            let due_sleep = async {
                match due {
                    Some(due) => {
                        tokio::time::sleep(Duration::from_millis(due.saturating_sub(now_ms())))
                            .await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(joined) = self.fetches.join_next() => self.take_fetched(joined)?,
                () = due_sleep => {}
                () = &mut reassigned => {}
            }
        }
    }

    fn prefetch(&self) -> u16 {
        self.prefetch
    }
}

/// One unsettled delivery: its partition, offset and record.
struct KafkaSettle {
    bus: KafkaBus,
    names: Arc<Names>,
    shared: Arc<SubscriptionShared>,
    /// The assignment it was delivered under.
    epoch: u64,
    index: usize,
    offset: i64,
    attempt: u32,
    record: Record,
}

impl std::fmt::Debug for KafkaSettle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettle")
            .field("group", &self.names.group)
            .field("offset", &self.offset)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Settle for KafkaSettle {
    /// Records the outcome; the membership task commits the settled prefix of each
    /// partition every `commit_interval_ms` (and before a rebalance or leaving).
    async fn settle(self: Box<Self>, outcome: Outcome) -> Result<(), BusError> {
        let Self { bus, names, shared, epoch, index, offset, attempt, mut record } = *self;
        let in_flight = |shared: &SubscriptionShared| {
            shared.alive.load(Ordering::SeqCst) && lock(&shared.state).epoch == epoch
        };
        if !in_flight(&shared) {
            return Err(BusError::NotInFlight);
        }
        let retry = bus.shared.options.retry;
        // The copy is stored before the offset may move past the original.
        match outcome {
            Outcome::Ack => {}
            Outcome::Retry if attempt >= retry.max_attempts => {
                bus.dead_letter(&names, record, attempt, DeadLetterReason::MaxAttempts).await?;
            }
            Outcome::Retry => {
                let due = now_ms().saturating_add(retry.backoff_ms(attempt));
                record
                    .headers
                    .insert(ATTEMPT_HEADER.into(), (attempt + 1).to_string().into_bytes());
                record.headers.insert(DUE_HEADER.into(), due.to_string().into_bytes());
                record.timestamp = timestamp(now_ms());
                let key = record.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                let partition = partition_of(&key, shared.retry_partitions);
                bus.produce(&names.retry, partition, record).await?;
            }
            Outcome::Reject => {
                bus.dead_letter(&names, record, attempt, DeadLetterReason::Rejected).await?;
            }
        }
        {
            let mut state = lock(&shared.state);
            let removed = state.offsets(epoch, index).is_some_and(|o| o.in_flight.remove(&offset));
            if !removed || !shared.alive.load(Ordering::SeqCst) {
                return Err(BusError::NotInFlight);
            }
            state.unsettled = state.unsettled.saturating_sub(1);
        }
        shared.settled.notify_waiters();
        match outcome {
            Outcome::Ack => METRICS.acked(&names.consumer),
            Outcome::Retry if attempt < retry.max_attempts => METRICS.retried(&names.consumer),
            Outcome::Retry | Outcome::Reject => {}
        }
        Ok(())
    }
}

/// The consumer-group requests rskafka does not speak: FindCoordinator (v0), JoinGroup
/// (v4), SyncGroup (v2), Heartbeat (v2), LeaveGroup (v2), OffsetCommit (v2) and OffsetFetch
/// (v1), over connections of their own to each group's coordinator.
struct Groups {
    bootstrap: Vec<String>,
    timeout: Duration,
    link: tokio::sync::Mutex<GroupLink>,
}

#[derive(Default)]
struct GroupLink {
    /// Coordinator address by group.
    coordinators: HashMap<String, String>,
    /// Idle connections by address.
    connections: HashMap<String, TcpStream>,
    correlation: i32,
}

const FIND_COORDINATOR: (i16, i16) = (10, 0);
const OFFSET_COMMIT: (i16, i16) = (8, 2);
const OFFSET_FETCH: (i16, i16) = (9, 1);
const JOIN_GROUP: (i16, i16) = (11, 4);
const HEARTBEAT: (i16, i16) = (12, 2);
const LEAVE_GROUP: (i16, i16) = (13, 2);
const SYNC_GROUP: (i16, i16) = (14, 2);
/// Kafka protocol error codes the membership answers to.
const NONE: i16 = 0;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;
/// What refuses a commit because the member or its generation is no longer current.
const FENCED: [i16; 3] = [ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS];
/// Errors after which the coordinator is looked up again (Kafka protocol error codes
/// COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR).
const COORDINATOR_ERRORS: [i16; 3] = [14, 15, 16];

/// Kafka protocol encoding (big-endian, strings with an `i16` length).
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn i16(&mut self, n: i16) -> &mut Self {
        self.0.extend(n.to_be_bytes());
        self
    }
    fn i32(&mut self, n: i32) -> &mut Self {
        self.0.extend(n.to_be_bytes());
        self
    }
    fn i64(&mut self, n: i64) -> &mut Self {
        self.0.extend(n.to_be_bytes());
        self
    }
    fn string(&mut self, s: &str) -> Result<&mut Self, BusError> {
        let len = i16::try_from(s.len())
            .map_err(|_| BusError::InvalidOptions(format!("{s:?} is too long for Kafka")))?;
        self.i16(len);
        self.0.extend(s.as_bytes());
        Ok(self)
    }
    fn count(&mut self, n: usize) -> Result<&mut Self, BusError> {
        let n = i32::try_from(n).map_err(|_| BusError::InvalidOptions("array too long".into()))?;
        Ok(self.i32(n))
    }
    fn bytes(&mut self, b: &[u8]) -> Result<&mut Self, BusError> {
        self.count(b.len())?;
        self.0.extend(b);
        Ok(self)
    }
}

/// Kafka protocol decoding of one response.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], BusError> {
        let Some((head, rest)) = self.0.split_first_chunk::<N>() else {
            return Err(BusError::Unavailable(
                "truncated answer from the group coordinator".into(),
            ));
        };
        self.0 = rest;
        Ok(*head)
    }
    fn i16(&mut self) -> Result<i16, BusError> {
        self.take().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Result<i32, BusError> {
        self.take().map(i32::from_be_bytes)
    }
    fn i64(&mut self) -> Result<i64, BusError> {
        self.take().map(i64::from_be_bytes)
    }
    fn count(&mut self) -> Result<usize, BusError> {
        Ok(usize::try_from(self.i32()?).unwrap_or(0))
    }
    /// A nullable string.
    fn string(&mut self) -> Result<Option<String>, BusError> {
        let Ok(len) = usize::try_from(self.i16()?) else { return Ok(None) };
        if self.0.len() < len {
            return Err(BusError::Unavailable(
                "truncated answer from the group coordinator".into(),
            ));
        }
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(Some(String::from_utf8_lossy(text).into_owned()))
    }
    /// Nullable bytes (an `i32` length); null reads as empty.
    fn bytes(&mut self) -> Result<Vec<u8>, BusError> {
        let Ok(len) = usize::try_from(self.i32()?) else { return Ok(Vec::new()) };
        if self.0.len() < len {
            return Err(BusError::Unavailable(
                "truncated answer from the group coordinator".into(),
            ));
        }
        let (bytes, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(bytes.to_vec())
    }
}

/// A JoinGroup answer.
struct Joined {
    code: i16,
    generation: i32,
    leader: String,
    member_id: String,
    /// Every member with its subscription, for the leader only.
    members: Vec<(String, Vec<u8>)>,
}

impl Groups {
    fn new(bootstrap: Vec<String>, timeout: Duration) -> Self {
        Self { bootstrap, timeout, link: tokio::sync::Mutex::default() }
    }

    /// Commits `offsets` (topic, partition, next offset to read) for `group` as `member`, or
    /// as a group without members does (generation -1) when `None`. False when the
    /// coordinator refused the member or its generation (a rebalance is under way).
    async fn commit(
        &self,
        group: &str,
        member: Option<&Member>,
        offsets: &[(String, i32, i64)],
    ) -> Result<bool, BusError> {
        let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
        for (topic, partition, offset) in offsets {
            by_topic.entry(topic).or_default().push((*partition, *offset));
        }
        let mut body = Writer::default();
        let (generation, member_id) = member.map_or((-1, ""), |m| (m.generation, m.id.as_str()));
        body.string(group)?.i32(generation).string(member_id)?.i64(-1).count(by_topic.len())?;
        for (topic, partitions) in &by_topic {
            body.string(topic)?.count(partitions.len())?;
            for (partition, offset) in partitions {
                body.i32(*partition).i64(*offset).string("")?;
            }
        }
        let answer = self.call(group, OFFSET_COMMIT, &body.0).await?;
        let mut r = Reader(&answer);
        for _ in 0..r.count()? {
            let topic = r.string()?.unwrap_or_default();
            for _ in 0..r.count()? {
                let partition = r.i32()?;
                let code = r.i16()?;
                if FENCED.contains(&code) {
                    return Ok(false);
                }
                if code != 0 {
                    self.forget_on(group, code).await;
                    return Err(BusError::Unavailable(format!(
                        "OffsetCommit {group} {topic}/{partition}: error code {code}"
                    )));
                }
            }
        }
        Ok(true)
    }

    /// JoinGroup: asks to be (or stay) a member with `metadata` (a ConsumerProtocol
    /// subscription); may wait at the coordinator until the rebalance completes.
    async fn join(
        &self,
        group: &str,
        session_timeout_ms: i32,
        rebalance_timeout_ms: i32,
        member_id: &str,
        metadata: &[u8],
    ) -> Result<Joined, BusError> {
        let mut body = Writer::default();
        body.string(group)?.i32(session_timeout_ms).i32(rebalance_timeout_ms).string(member_id)?;
        body.string(PROTOCOL_TYPE)?.count(1)?.string(ASSIGNOR)?.bytes(metadata)?;
        let answer = self.call(group, JOIN_GROUP, &body.0).await?;
        let mut r = Reader(&answer);
        let _throttle_ms = r.i32()?;
        let code = r.i16()?;
        let generation = r.i32()?;
        let _protocol = r.string()?;
        let leader = r.string()?.unwrap_or_default();
        let member_id = r.string()?.unwrap_or_default();
        let mut members = Vec::new();
        for _ in 0..r.count()? {
            let id = r.string()?.unwrap_or_default();
            members.push((id, r.bytes()?));
        }
        self.forget_on(group, code).await;
        Ok(Joined { code, generation, leader, member_id, members })
    }

    /// SyncGroup: the leader hands in every member's assignment; every member gets its own
    /// (error code, encoded assignment).
    async fn sync(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: &[(String, Vec<u8>)],
    ) -> Result<(i16, Vec<u8>), BusError> {
        let mut body = Writer::default();
        body.string(group)?.i32(generation).string(member_id)?.count(assignments.len())?;
        for (member, assignment) in assignments {
            body.string(member)?.bytes(assignment)?;
        }
        let answer = self.call(group, SYNC_GROUP, &body.0).await?;
        let mut r = Reader(&answer);
        let _throttle_ms = r.i32()?;
        let code = r.i16()?;
        let assignment = r.bytes()?;
        self.forget_on(group, code).await;
        Ok((code, assignment))
    }

    /// Heartbeat: the member is alive; the error code says whether to rejoin.
    async fn heartbeat(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
    ) -> Result<i16, BusError> {
        let mut body = Writer::default();
        body.string(group)?.i32(generation).string(member_id)?;
        let answer = self.call(group, HEARTBEAT, &body.0).await?;
        let mut r = Reader(&answer);
        let _throttle_ms = r.i32()?;
        let code = r.i16()?;
        self.forget_on(group, code).await;
        Ok(code)
    }

    /// LeaveGroup: the member's partitions go to the others at once.
    async fn leave(&self, group: &str, member_id: &str) -> Result<(), BusError> {
        let mut body = Writer::default();
        body.string(group)?.string(member_id)?;
        let answer = self.call(group, LEAVE_GROUP, &body.0).await?;
        let mut r = Reader(&answer);
        let _throttle_ms = r.i32()?;
        match r.i16()? {
            NONE | UNKNOWN_MEMBER_ID => Ok(()),
            code => {
                self.forget_on(group, code).await;
                Err(BusError::Unavailable(format!("LeaveGroup {group}: error code {code}")))
            }
        }
    }

    /// The committed offsets of `group` (-1 where there is none).
    async fn fetch(
        &self,
        group: &str,
        topics: &[(String, Vec<i32>)],
    ) -> Result<HashMap<(String, i32), i64>, BusError> {
        let mut body = Writer::default();
        body.string(group)?.count(topics.len())?;
        for (topic, partitions) in topics {
            body.string(topic)?.count(partitions.len())?;
            for partition in partitions {
                body.i32(*partition);
            }
        }
        let answer = self.call(group, OFFSET_FETCH, &body.0).await?;
        let mut r = Reader(&answer);
        let mut offsets = HashMap::new();
        for _ in 0..r.count()? {
            let topic = r.string()?.unwrap_or_default();
            for _ in 0..r.count()? {
                let partition = r.i32()?;
                let offset = r.i64()?;
                let _metadata = r.string()?;
                let code = r.i16()?;
                if code != 0 {
                    self.forget_on(group, code).await;
                    return Err(BusError::Unavailable(format!(
                        "OffsetFetch {group} {topic}/{partition}: error code {code}"
                    )));
                }
                offsets.insert((topic.clone(), partition), offset);
            }
        }
        Ok(offsets)
    }

    async fn forget_on(&self, group: &str, code: i16) {
        if COORDINATOR_ERRORS.contains(&code) {
            self.link.lock().await.coordinators.remove(group);
        }
    }

    /// One request to `group`'s coordinator; the answer without its header.
    async fn call(&self, group: &str, api: (i16, i16), body: &[u8]) -> Result<Vec<u8>, BusError> {
        let exchange = async {
            let mut link = self.link.lock().await;
            let coordinator = match link.coordinators.get(group) {
                Some(address) => address.clone(),
                None => {
                    let address = self.find_coordinator(&mut link, group).await?;
                    link.coordinators.insert(group.to_owned(), address.clone());
                    address
                }
            };
            let answer = request(&mut link, &coordinator, api, body).await;
            if answer.is_err() {
                link.coordinators.remove(group);
            }
            answer
        };
        tokio::time::timeout(self.timeout, exchange).await.unwrap_or_else(|_| {
            Err(BusError::Unavailable(format!(
                "group coordinator of {group}: no answer within {:?}",
                self.timeout
            )))
        })
    }

    async fn find_coordinator(
        &self,
        link: &mut GroupLink,
        group: &str,
    ) -> Result<String, BusError> {
        let mut body = Writer::default();
        body.string(group)?;
        let mut last_error = BusError::Unavailable("no bootstrap broker".into());
        for address in &self.bootstrap {
            match request(link, address, FIND_COORDINATOR, &body.0).await {
                Ok(answer) => {
                    let mut r = Reader(&answer);
                    let code = r.i16()?;
                    let _node = r.i32()?;
                    let host = r.string()?.unwrap_or_default();
                    let port = r.i32()?;
                    if code != 0 {
                        return Err(BusError::Unavailable(format!(
                            "FindCoordinator {group}: error code {code}"
                        )));
                    }
                    return Ok(format!("{host}:{port}"));
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }
}

/// Sends one request on an idle connection to `address` (opening one if needed) and reads
/// its answer. A connection is put back only after a complete exchange, so one abandoned
/// half-way is never reused.
async fn request(
    link: &mut GroupLink,
    address: &str,
    (api_key, api_version): (i16, i16),
    body: &[u8],
) -> Result<Vec<u8>, BusError> {
    let context = |e: std::io::Error| broker(&format!("group coordinator {address}"), e);
    let mut stream = match link.connections.remove(address) {
        Some(stream) => stream,
        None => TcpStream::connect(address).await.map_err(context)?,
    };
    link.correlation = link.correlation.wrapping_add(1);
    let correlation = link.correlation;
    let mut frame = Writer::default();
    frame.i32(0).i16(api_key).i16(api_version).i32(correlation).string(CLIENT_ID)?;
    frame.0.extend(body);
    let size = i32::try_from(frame.0.len() - 4)
        .map_err(|_| BusError::InvalidOptions("request too large".into()))?;
    frame.0[..4].copy_from_slice(&size.to_be_bytes());
    stream.write_all(&frame.0).await.map_err(context)?;
    let size = usize::try_from(stream.read_i32().await.map_err(context)?).unwrap_or(0);
    if !(4..=MAX_RESPONSE_BYTES).contains(&size) {
        return Err(broker(
            &format!("group coordinator {address}"),
            format!("answer of {size} bytes"),
        ));
    }
    let mut answer = vec![0; size];
    stream.read_exact(&mut answer).await.map_err(context)?;
    let mut r = Reader(&answer);
    if r.i32()? != correlation {
        return Err(broker(&format!("group coordinator {address}"), "answer to another request"));
    }
    link.connections.insert(address.to_owned(), stream);
    Ok(answer.split_off(4))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashes_keys_as_kafka_does() {
        // Vectors from Apache Kafka's UtilsTest.testMurmur2.
        let cases: [(&str, i32); 4] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()).cast_signed(), expected, "{key}");
        }
        assert_eq!(partition_of("acct-1", 1), 0);
        assert!((0..8).contains(&partition_of("acct-1", 8)));
    }

    #[test]
    fn the_range_assignor_splits_every_topic_over_its_members() {
        let topics = [("p.events".to_owned(), 8), ("p.c.retry".to_owned(), 2)];
        let subscription = encode_subscription(&topics).unwrap();
        assert_eq!(decode_subscription(&subscription).unwrap(), ["p.events", "p.c.retry"]);
        let members: Vec<(String, Vec<u8>)> = ["m-b", "m-a", "m-c"]
            .iter()
            .map(|id| ((*id).to_owned(), subscription.clone()))
            .collect();
        let assigned: BTreeMap<String, Vec<(String, i32)>> = assign_range(&members, &topics)
            .unwrap()
            .into_iter()
            .map(|(id, assignment)| (id, decode_assignment(&assignment).unwrap()))
            .collect();
        let events = |id: &str| -> Vec<i32> {
            assigned[id].iter().filter(|(t, _)| t == "p.events").map(|(_, p)| *p).collect()
        };
        assert_eq!(
            (events("m-a"), events("m-b"), events("m-c")),
            (vec![0, 1, 2], vec![3, 4, 5], vec![6, 7])
        );
        let retries: Vec<usize> = ["m-a", "m-b", "m-c"]
            .iter()
            .map(|id| assigned[*id].iter().filter(|(t, _)| t == "p.c.retry").count())
            .collect();
        assert_eq!(retries, [1, 1, 0]);
        assert_eq!(decode_assignment(&[]).unwrap(), []);
    }

    #[test]
    fn parses_broker_lists() {
        assert_eq!(parse_brokers("kafka://127.0.0.1:9092").unwrap(), ["127.0.0.1:9092"]);
        assert_eq!(parse_brokers("kafka://a:1,b:2/").unwrap(), ["a:1", "b:2"]);
        for bad in ["127.0.0.1:9092", "kafka://", "kafka://a", "kafka://a:x", "kafka://a:1,"] {
            assert!(parse_brokers(bad).is_err(), "{bad}");
        }
    }
}
