//! Apache Kafka in and out, through rdkafka (librdkafka).
//!
//! ```text
//!   topic partitions p % workers == worker ──assign at stored offsets──▶ KafkaSource::poll
//!        ──decode (bare Avro | Confluent framing)──▶ Record  or  DeadLetter(partition, offset, reason, bytes)
//! ```
//!
//! The consumer never joins a consumer group's rebalancing and never commits offsets: partitions are
//! assigned to workers by number, and the resume position of each partition is stored by the
//! PostgreSQL sink in the same transaction as the data it produced. [`Producer`] writes generated
//! events (key = region) for `streampulse generate`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::avro::Decoder;
use crate::confluent::{ConfluentDecoder, SchemaRegistry};
use crate::event::{DeadLetter, Record};
use crate::source::{owns, Poll, Source};

/// How record values are encoded on the wire (SPEC §3).
#[derive(Clone, Debug)]
pub enum Format {
    /// A bare Avro datum written with `schemas/event.avsc`.
    Avro,
    /// 0x00, a 4-byte schema id, the datum; writer schemas come from the registry at this URL.
    Confluent { registry: SchemaRegistry },
}

/// Where to read from and how.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub format: Format,
    /// Extra librdkafka settings (`--kafka-option key=value`), applied last.
    pub options: Vec<(String, String)>,
    /// Where a partition without stored progress starts: the first record at or after this time
    /// (ms since the epoch), or the beginning when `None`.
    pub start_at: Option<i64>,
    /// An event more than this many ms ahead of its record's Kafka timestamp is a dead letter
    /// (`--max-future`, see [`crate::validate::check_future`]).
    pub max_future_ms: i64,
}

impl KafkaConfig {
    /// The client settings shared by consumers, producers and admin clients.
    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }

    /// A consumer with the project's settings (the source's, and the benchmarks' raw readers').
    pub fn consumer(&self) -> Result<BaseConsumer, KafkaError> {
        let mut config = self.client();
        // librdkafka wants a group id, but we never join the group or commit to it: offsets live in
        // PostgreSQL beside the data they produced.
        config.set("group.id", "streampulse");
        config.set("enable.auto.commit", "false");
        config.set("enable.auto.offset.store", "false");
        // A partition without stored progress starts at the beginning: a fresh table set replays the topic.
        config.set("auto.offset.reset", "earliest");
        // Bound the prefetch queue per consumer (default 64 MiB): memory stays small per worker.
        config.set("queued.max.messages.kbytes", "16384");
        // When that queue is full, librdkafka 2.12 pauses fetching for this long (default 1 s):
        // a consumer that decodes slower than the broker sends would then drain the queue and sit
        // idle for most of the second. A short pause keeps the queue topped up (measured with
        // `streampulse bench kafka`, README "Performance").
        config.set("fetch.queue.backoff.ms", "5");
        // Fetch promptly when little data is waiting, so the dashboard stays fresh.
        config.set("fetch.wait.max.ms", "50");
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config.create()
    }

    /// The topic's partition count, waiting up to `timeout` for it to exist.
    pub fn partition_count(&self, timeout: Duration) -> Result<u32, KafkaError> {
        self.partition_count_with(&self.consumer()?, timeout)
    }

    fn partition_count_with(
        &self,
        consumer: &BaseConsumer,
        timeout: Duration,
    ) -> Result<u32, KafkaError> {
        let deadline = Instant::now() + timeout;
        loop {
            let metadata = consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(5))?;
            let partitions = metadata
                .topics()
                .first()
                .map_or(0, |t| t.partitions().len());
            if partitions > 0 {
                return Ok(partitions as u32);
            }
            if Instant::now() >= deadline {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The high watermark (next offset to be written) of every partition.
    pub fn high_watermarks(&self) -> Result<BTreeMap<u32, i64>, KafkaError> {
        let consumer = self.consumer()?;
        let count = self.partition_count(Duration::from_secs(10))?;
        let mut marks = BTreeMap::new();
        for partition in 0..count {
            let (_, high) =
                consumer.fetch_watermarks(&self.topic, partition as i32, Duration::from_secs(5))?;
            marks.insert(partition, high);
        }
        Ok(marks)
    }

    /// Creates the topic unless it exists.
    pub fn create_topic(&self, partitions: u32) -> Result<(), KafkaError> {
        let admin: AdminClient<DefaultClientContext> = self.client().create()?;
        let topic = NewTopic::new(&self.topic, partitions as i32, TopicReplication::Fixed(1));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|_| KafkaError::AdminOpCreation("no runtime for the admin client".into()))?;
        let results = runtime.block_on(admin.create_topics([&topic], &AdminOptions::new()))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(KafkaError::AdminOp(code)),
            }
        }
        Ok(())
    }
}

/// Whether an error from [`KafkaConfig::partition_count`] means the broker answered and the topic
/// does not exist (a misconfiguration), rather than that the broker could not be reached.
pub fn is_missing_topic(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition)
            | KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopic)
    )
}

fn start_offset(config: &KafkaConfig) -> Offset {
    config.start_at.map_or(Offset::Beginning, Offset::Offset)
}

/// Reads the topic's high watermarks (for the lag metric) through one long-lived client.
pub struct HighWatermarks {
    consumer: BaseConsumer,
    topic: String,
}

impl HighWatermarks {
    pub fn new(config: &KafkaConfig) -> Result<HighWatermarks, KafkaError> {
        Ok(HighWatermarks {
            consumer: config.consumer()?,
            topic: config.topic.clone(),
        })
    }

    /// The next offset to be written, per partition (a network round trip per partition).
    pub fn fetch(&self, partitions: u32) -> Result<BTreeMap<u32, i64>, KafkaError> {
        (0..partitions)
            .map(|p| {
                let (_, high) = self.consumer.fetch_watermarks(
                    &self.topic,
                    p as i32,
                    Duration::from_secs(5),
                )?;
                Ok((p, high))
            })
            .collect()
    }
}

/// The decoder for a wire format.
enum Decoding {
    Avro(Decoder),
    Confluent(ConfluentDecoder),
}

/// One worker's reader of its partitions of the topic.
pub struct KafkaSource {
    consumer: BaseConsumer,
    partitions: Vec<u32>,
    decoding: Decoding,
    /// A record whose decoding failed for a transient reason (the registry was unreachable): it is
    /// retried before anything else, so it is neither lost nor dead-lettered.
    pending: Option<Pending>,
    retry_at: Instant,
    max_future_ms: i64,
    /// Per partition, the Kafka timestamp of the newest record read.
    record_times: BTreeMap<u32, i64>,
}

/// Where a record was read, and its Kafka timestamp.
#[derive(Clone, Copy)]
struct Position {
    partition: u32,
    offset: i64,
    timestamp: Option<i64>,
}

/// A record whose decoding must be retried (the registry was unreachable), with its value.
struct Pending {
    at: Position,
    bytes: Vec<u8>,
}

impl KafkaSource {
    /// Assigns this worker's partitions (`p % workers == worker`), each at its stored resume offset
    /// or, without one, at the beginning.
    pub fn new(
        config: &KafkaConfig,
        worker: usize,
        workers: usize,
        resume: &BTreeMap<u32, i64>,
    ) -> Result<KafkaSource, KafkaError> {
        let consumer = config.consumer()?;
        let count = config.partition_count_with(&consumer, Duration::from_secs(30))?;
        let partitions: Vec<u32> = (0..count).filter(|&p| owns(p, worker, workers)).collect();
        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            let offset = match (resume.get(&p), config.start_at) {
                (Some(&stored), _) => Offset::Offset(stored),
                (None, Some(ms)) => Offset::Offset(ms), // resolved by time below
                // The beginning, as a number: assigned at Offset::Beginning, librdkafka asks the
                // leader for it before the connection is up and retries only after 500 ms, which
                // was most of a fresh start's time to its first record. (If retention removes
                // those records meanwhile, auto.offset.reset=earliest still applies.)
                (None, None) => {
                    match consumer.fetch_watermarks(
                        &config.topic,
                        p as i32,
                        Duration::from_secs(10),
                    ) {
                        Ok((low, _)) => Offset::Offset(low),
                        Err(e) => {
                            // Slower to start, never wrong: librdkafka resolves it itself.
                            log::warn!("kafka: partition {p}: no low watermark ({e}); starting at the beginning");
                            Offset::Beginning
                        }
                    }
                }
            };
            assignment.add_partition_offset(&config.topic, p as i32, offset)?;
        }
        if config.start_at.is_some() {
            // Entries holding a timestamp become the first offset at or after that time (the end
            // when there is none); entries holding a stored offset are left as they are.
            let mut by_time = TopicPartitionList::new();
            for &p in partitions.iter().filter(|p| !resume.contains_key(p)) {
                by_time.add_partition_offset(&config.topic, p as i32, start_offset(config))?;
            }
            let resolved = consumer.offsets_for_times(by_time, Duration::from_secs(10))?;
            for element in resolved.elements() {
                assignment.set_partition_offset(
                    &config.topic,
                    element.partition(),
                    element.offset(),
                )?;
            }
        }
        consumer.assign(&assignment)?;
        let decoding = match &config.format {
            Format::Avro => Decoding::Avro(Decoder::new()),
            Format::Confluent { registry } => {
                Decoding::Confluent(ConfluentDecoder::new(registry.clone()))
            }
        };
        Ok(KafkaSource {
            consumer,
            partitions,
            decoding,
            pending: None,
            retry_at: Instant::now(),
            max_future_ms: config.max_future_ms,
            record_times: BTreeMap::new(),
        })
    }

    /// Keeps a record whose decoding failed for a transient reason, to be retried first.
    fn retry_later(&mut self, at: Position, bytes: &[u8]) {
        self.pending = Some(Pending {
            at,
            bytes: bytes.to_vec(),
        });
        self.retry_at = Instant::now() + Duration::from_secs(1);
    }
}

/// Decodes one value (borrowed from the consumer's buffer: only a dead letter is copied) and
/// checks it against the domain ([`crate::validate`]) into `out` or `dead`; returns false on a
/// transient error (the caller keeps the record for a retry).
fn decode_into(
    decoding: &mut Decoding,
    max_future_ms: i64,
    at: Position,
    bytes: &[u8],
    out: &mut Vec<Record>,
    dead: &mut Vec<DeadLetter>,
) -> bool {
    let Position {
        partition,
        offset,
        timestamp,
    } = at;
    let result = match decoding {
        Decoding::Avro(d) => d.decode(bytes).map_err(|e| e.to_string()),
        Decoding::Confluent(d) => match d.decode(bytes) {
            Ok(event) => Ok(event),
            Err(e) if e.is_retryable() => {
                log::warn!("partition {partition} offset {offset}: {e}; retrying");
                return false;
            }
            Err(e) => Err(e.to_string()),
        },
    };
    let result = result.and_then(|event| {
        crate::validate::check_future(&event, timestamp, max_future_ms)
            .map(|()| event)
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(event) => out.push(Record {
            partition,
            offset,
            event,
        }),
        Err(reason) => dead.push(DeadLetter {
            partition,
            offset,
            reason,
            raw: bytes.to_vec(),
        }),
    }
    true
}

impl Source for KafkaSource {
    fn partitions(&self) -> Vec<u32> {
        self.partitions.clone()
    }

    fn record_time(&self, partition: u32) -> Option<i64> {
        self.record_times.get(&partition).copied()
    }

    fn poll(&mut self, out: &mut Vec<Record>, dead: &mut Vec<DeadLetter>, max: usize) -> Poll {
        if let Some(record) = self.pending.take() {
            if Instant::now() < self.retry_at {
                self.pending = Some(record);
                return Poll::Idle;
            }
            let (decoding, max_future) = (&mut self.decoding, self.max_future_ms);
            if !decode_into(decoding, max_future, record.at, &record.bytes, out, dead) {
                self.retry_later(record.at, &record.bytes);
                return Poll::Idle;
            }
        }
        let mut taken = 0;
        while taken < max {
            // Wait briefly for the first message only; then drain what is already fetched.
            let wait = if taken == 0 {
                Duration::from_millis(10)
            } else {
                Duration::ZERO
            };
            let message = match self.consumer.poll(wait) {
                None => break,
                Some(Err(e)) => {
                    log::warn!("kafka: {e}");
                    break;
                }
                Some(Ok(message)) => message,
            };
            taken += 1;
            let at = Position {
                partition: message.partition() as u32,
                offset: message.offset(),
                timestamp: message.timestamp().to_millis(),
            };
            if let Some(ms) = at.timestamp {
                self.record_times.insert(at.partition, ms);
            }
            let bytes = message.payload().unwrap_or(&[]);
            if !decode_into(&mut self.decoding, self.max_future_ms, at, bytes, out, dead) {
                let bytes = bytes.to_vec();
                drop(message);
                self.retry_later(at, &bytes);
                break;
            }
        }
        if taken > 0 {
            Poll::Ready
        } else {
            Poll::Idle
        }
    }
}

/// Writes records to a topic, in order per partition, for `streampulse generate`.
pub struct Producer {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

impl Producer {
    pub fn new(config: &KafkaConfig) -> Result<Producer, KafkaError> {
        let mut client = config.client();
        // Idempotence keeps each partition's order across internal retries and writes no duplicates.
        client.set("enable.idempotence", "true");
        client.set("linger.ms", "20");
        client.set("compression.type", "lz4");
        for (key, value) in &config.options {
            client.set(key, value);
        }
        Ok(Producer {
            producer: client.create()?,
            topic: config.topic.clone(),
        })
    }

    /// Queues one record stamped `timestamp` (ms since the epoch; `None`: the time of sending),
    /// waiting while librdkafka's queue is full.
    pub fn send(&self, key: &str, value: &[u8], timestamp: Option<i64>) -> Result<(), KafkaError> {
        let mut record = BaseRecord::to(&self.topic).key(key).payload(value);
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits until everything queued is acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
