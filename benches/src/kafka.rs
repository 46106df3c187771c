//! The Kafka benchmark: the path a user runs (Kafka in, PostgreSQL out) beside the raw speed of
//! reading the same topic with the same client settings, all in one invocation.
//!
//! ```text
//!   seeded topic (reused when it already holds the events) ── partition sizes
//!     raw consume            one consumer, the project's settings, payloads untouched
//!     raw consume + decode   the same, each payload decoded and checked (ingest::Decoder)
//!     pipeline → memory      `streampulse run --source kafka` (API only), until /metrics counts
//!                            every record
//!     pipeline → PostgreSQL  `streampulse run --source kafka --postgres`, until sink_progress
//!                            covers the topic
//!     Kafka Streams peer     benches/kstreams/run.sh on the same topic (with `kstreams`), grace
//!                            5 s and 1 day: its own time to aggregate every record
//! ```
//!
//! Each pipeline run is a fresh process (and a fresh schema), timed from its start to the moment
//! the whole topic is accounted for, so start-up and catch-up are both in the figure; its peak RSS
//! (`VmHWM`) is read before it is stopped. Medians over `runs`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use streampulse_ingest::avro::Encoder;
use streampulse_ingest::kafka::{Format, KafkaConfig, Producer};
use streampulse_ingest::{Decoder, Generator, Scenario};

use crate::median;

/// What to measure.
#[derive(Clone, Debug)]
pub struct KafkaBench {
    pub brokers: String,
    pub topic: String,
    /// Events in the topic (written when the topic does not hold exactly these).
    pub events: u64,
    pub partitions: u32,
    pub seed: u64,
    pub runs: usize,
    pub workers: Vec<usize>,
    /// PostgreSQL URL for the sink runs (`None`: skip them).
    pub postgres: Option<String>,
    /// The `streampulse` binary to run.
    pub binary: PathBuf,
    /// Extra flags for every `streampulse run` (e.g. `--kafka-option k=v`).
    pub run_args: Vec<String>,
    /// benches/kstreams/run.sh, to run the Kafka Streams peer on the same topic (`None`: skip).
    pub kstreams: Option<PathBuf>,
}

/// One line of output.
#[derive(Clone, Debug, Serialize)]
pub struct KafkaMeasurement {
    pub name: String,
    /// Workers of the pipeline runs (the raw readers use one consumer).
    pub workers: usize,
    pub events: u64,
    pub runs: usize,
    /// Median seconds.
    pub seconds: f64,
    pub events_per_sec: f64,
    /// Events/s over the raw consume's, measured in the same invocation.
    pub ratio_to_raw: f64,
    /// Median seconds from the process's start to its first record (group join, metadata, the
    /// API): part of `seconds`, and of `ratio_to_raw`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_s: Option<f64>,
    /// Median events/s from the first record on: how fast a running process works through a
    /// backlog (the Kafka Streams peer reports only this kind of figure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_per_sec_after_start: Option<f64>,
    /// Median peak resident memory of the process, MiB (pipeline runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// The peer's median count of events its windows dropped as late.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped_late: Option<f64>,
}

/// The topic's shape, printed with the results.
#[derive(Clone, Debug, Serialize)]
pub struct TopicShape {
    pub topic: String,
    pub events: u64,
    pub partition_sizes: BTreeMap<u32, i64>,
}

pub(crate) fn config(bench: &KafkaBench) -> KafkaConfig {
    KafkaConfig {
        brokers: bench.brokers.clone(),
        topic: bench.topic.clone(),
        format: Format::Avro,
        options: Vec::new(),
        start_at: None,
        max_future_ms: i64::MAX / 2,
    }
}

pub(crate) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Makes sure the topic holds exactly the seeded events (keyed by region, as `generate` writes
/// them, so partitions are as skewed as real regions make them) and returns its shape.
pub fn prepare_topic(bench: &KafkaBench, log: &dyn Fn(String)) -> Result<TopicShape, String> {
    let kafka = config(bench);
    kafka.create_topic(bench.partitions).map_err(err)?;
    let mut sizes = kafka.high_watermarks().map_err(err)?;
    let total: i64 = sizes.values().sum();
    if total as u64 != bench.events {
        if total != 0 {
            return Err(format!(
                "topic {} holds {total} events, not {}: use another --topic",
                bench.topic, bench.events
            ));
        }
        log(format!(
            "writing {} events to {} (once; later runs reuse the topic)",
            bench.events, bench.topic
        ));
        let producer = Producer::new(&kafka).map_err(err)?;
        let start = 1_700_000_000_000 - 1_700_000_000_000 % 60_000;
        let generator = Generator::new(bench.seed, Scenario::CdnOutage, start, 2_000.0);
        let encoder = Encoder::new();
        for i in 0..bench.events {
            let event = generator.event(i);
            producer
                .send(&event.user_context.region, &encoder.encode(&event), None)
                .map_err(err)?;
        }
        producer.flush(Duration::from_secs(120)).map_err(err)?;
        sizes = kafka.high_watermarks().map_err(err)?;
    }
    Ok(TopicShape {
        topic: bench.topic.clone(),
        events: sizes.values().sum::<i64>() as u64,
        partition_sizes: sizes,
    })
}

/// Reads the whole topic with one consumer of the project's settings; with `decode`, decodes and
/// checks every payload. Returns the seconds it took.
pub fn raw_read(bench: &KafkaBench, shape: &TopicShape, decode: bool) -> Result<f64, String> {
    let kafka = config(bench);
    let consumer: BaseConsumer = kafka.consumer().map_err(err)?;
    // Explicit start offsets, as the pipeline's source assigns them: at Offset::Beginning
    // librdkafka would first wait ~500 ms to resolve the offset, and the ceiling would look lower.
    let mut assignment = TopicPartitionList::new();
    for &partition in shape.partition_sizes.keys() {
        let (low, _) = consumer
            .fetch_watermarks(&bench.topic, partition as i32, Duration::from_secs(10))
            .map_err(err)?;
        assignment
            .add_partition_offset(&bench.topic, partition as i32, Offset::Offset(low))
            .map_err(err)?;
    }
    let decoder = Decoder::new();
    let started = Instant::now();
    consumer.assign(&assignment).map_err(err)?;
    let (mut read, mut valid) = (0u64, 0u64);
    let deadline = started + Duration::from_secs(600);
    while read < shape.events {
        if Instant::now() > deadline {
            return Err(format!(
                "read only {read} of {} in 10 minutes",
                shape.events
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                read += 1;
                if decode {
                    valid += decoder.decode(message.payload().unwrap_or(&[])).is_ok() as u64;
                }
            }
            Some(Err(e)) => return Err(err(e)),
            None => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if decode && valid != read {
        return Err(format!("{} of {read} records did not decode", read - valid));
    }
    Ok(seconds)
}

/// A `streampulse run` process, killed when dropped.
pub(crate) struct Run {
    child: Child,
    pub(crate) api: Option<SocketAddr>,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Run {
    pub(crate) fn start(
        bench: &KafkaBench,
        workers: usize,
        schema: Option<&str>,
    ) -> Result<Run, String> {
        let mut command = Command::new(&bench.binary);
        command
            .args(["run", "--source", "kafka", "--brokers", &bench.brokers])
            .args(["--topic", &bench.topic, "--http", "127.0.0.1:0"])
            .args(["-w", &workers.to_string(), "--idle-timeout", "3600"])
            .args(["--status-interval", "3600"])
            .args(&bench.run_args);
        if let (Some(url), Some(schema)) = (&bench.postgres, schema) {
            command.args(["--postgres", url, "--pg-schema", schema]);
        }
        // Only the arguments configure the run (every flag also reads a STREAMPULSE_* variable).
        for (name, _) in std::env::vars() {
            if name.starts_with("STREAMPULSE_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bench.binary.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once("API and dashboard on http://") {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>().ok());
                }
            }
        });
        let api = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| "the pipeline's API did not start".to_string())?;
        Ok(Run { child, api })
    }

    /// A counter from `/metrics` (0 while absent).
    pub(crate) fn metric(&self, name: &str) -> f64 {
        let Some(addr) = self.api else { return 0.0 };
        let Ok(mut stream) = TcpStream::connect(addr) else {
            return 0.0;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return 0.0;
        }
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Peak resident memory so far, MiB.
    fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    fn exited(&mut self) -> Option<String> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .map(|status| format!("the pipeline exited early ({status})"))
    }
}

/// Runs the pipeline until the whole topic is accounted for (in the view the API serves, or
/// committed to PostgreSQL); returns seconds from the process's start, seconds until its first
/// record was read, and its peak RSS.
fn pipeline(
    bench: &KafkaBench,
    shape: &TopicShape,
    workers: usize,
    sink: bool,
) -> Result<Sample, String> {
    let schema = sink.then(|| format!("bench_{}_{}", std::process::id(), rand_suffix()));
    let mut db = match (&bench.postgres, sink) {
        (Some(url), true) => Some(postgres::Client::connect(url, postgres::NoTls).map_err(err)?),
        _ => None,
    };
    let started = Instant::now();
    let mut run = Run::start(bench, workers, schema.as_deref())?;
    let deadline = started + Duration::from_secs(900);
    let mut first_record = None;
    loop {
        if first_record.is_none() && run.metric("streampulse_events_total") > 0.0 {
            first_record = Some(started.elapsed().as_secs_f64());
        }
        if let Some(e) = run.exited() {
            return Err(e);
        }
        if Instant::now() > deadline {
            return Err("the pipeline did not finish in 15 minutes".into());
        }
        let done = match (&mut db, &schema) {
            (Some(db), Some(schema)) => {
                let sql = format!(
                    "SELECT coalesce(sum(next_offset), 0)::bigint FROM {schema}.sink_progress WHERE topic = $1"
                );
                db.query_one(&sql, &[&bench.topic])
                    .map(|row| row.get::<_, i64>(0) as u64 >= shape.events)
                    .unwrap_or(false)
            }
            _ => {
                let read = run.metric("streampulse_view_events_total")
                    + run.metric("streampulse_dead_letters_total");
                read as u64 >= shape.events
            }
        };
        if done {
            let seconds = started.elapsed().as_secs_f64();
            let rss = run.peak_rss_mib();
            drop(run);
            if let (Some(db), Some(schema)) = (&mut db, &schema) {
                let _ = db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
            }
            return Ok(Sample {
                seconds,
                startup: first_record,
                rss,
                dropped: None,
            });
        }
        std::thread::sleep(Duration::from_millis(if sink { 50 } else { 10 }));
    }
}

pub(crate) fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000)
}

/// One run's seconds and peak RSS (MiB).
/// One run of one measurement.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    /// From the process's start until the topic was accounted for.
    seconds: f64,
    /// From the process's start until its first record was read (processes only).
    startup: Option<f64>,
    /// Peak resident memory, MiB (processes of our own).
    rss: Option<f64>,
    /// Events the windows dropped as late (the peer).
    dropped: Option<f64>,
}

/// The grace periods the peer runs with: the job's lateness (5 s), and a day, which drops nothing
/// on the benchmark topic (see benches/kstreams/README.md for why 5 s drops most of it).
const PEER_GRACE_MS: [(u64, &str); 2] = [
    (5_000, "kstreams_grace_5s"),
    (86_400_000, "kstreams_grace_1d"),
];

/// One run of the Kafka Streams peer (one stream thread, at-least-once) on the bench topic: its
/// start-up (group join, internal topics) plus the time from its first record to the last one
/// aggregated, the start-up alone, and the events it dropped.
fn peer(bench: &KafkaBench, script: &PathBuf, grace_ms: u64) -> Result<Sample, String> {
    let output = Command::new(script)
        .arg(&bench.topic)
        .args(["--threads", "1", "--guarantee", "at_least_once"])
        .args(["--grace-ms", &grace_ms.to_string()])
        .env("STREAMPULSE_BROKERS", &bench.brokers)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!("{} failed: {}", script.display(), output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("the peer printed no JSON line")?;
    let value: serde_json::Value = serde_json::from_str(line).map_err(err)?;
    let seconds = value["seconds"]
        .as_f64()
        .ok_or("the peer's line has no seconds")?;
    let startup = value["startup_s"].as_f64().unwrap_or(0.0);
    Ok(Sample {
        seconds: startup + seconds,
        startup: Some(startup),
        rss: None,
        dropped: Some(value["dropped_late"].as_f64().unwrap_or(0.0)),
    })
}

/// Runs every measurement `runs` times, interleaved, and returns the medians: raw consume first
/// (the ratios' reference), then raw consume + decode, then the pipeline to memory and to
/// PostgreSQL for each worker count.
pub fn bench_kafka(
    bench: &KafkaBench,
    log: &dyn Fn(String),
) -> Result<(TopicShape, Vec<KafkaMeasurement>), String> {
    let shape = prepare_topic(bench, log)?;
    log(format!(
        "topic {} with {} events, partition sizes {:?}",
        shape.topic, shape.events, shape.partition_sizes
    ));
    let mut samples: BTreeMap<(usize, String, usize), Vec<Sample>> = BTreeMap::new();
    for run in 0..bench.runs {
        let mut record = |order: usize, name: &str, workers: usize, sample: Sample| {
            log(format!(
                "run {}/{}: {name} -w {workers}: {:.2} s ({:.0} events/s)",
                run + 1,
                bench.runs,
                sample.seconds,
                shape.events as f64 / sample.seconds
            ));
            samples
                .entry((order, name.to_string(), workers))
                .or_default()
                .push(sample);
        };
        let raw = |seconds| Sample {
            seconds,
            ..Sample::default()
        };
        record(0, "raw_consume", 1, raw(raw_read(bench, &shape, false)?));
        record(
            1,
            "raw_consume_decode",
            1,
            raw(raw_read(bench, &shape, true)?),
        );
        for &workers in &bench.workers {
            record(
                2,
                "pipeline_memory",
                workers,
                pipeline(bench, &shape, workers, false)?,
            );
            if bench.postgres.is_some() {
                let sample = pipeline(bench, &shape, workers, true)?;
                record(3, "pipeline_postgres", workers, sample);
            }
        }
        if let Some(script) = &bench.kstreams {
            for (grace_ms, name) in PEER_GRACE_MS {
                record(4, name, 1, peer(bench, script, grace_ms)?);
            }
        }
    }
    let raw = median(
        samples
            .iter()
            .find(|((_, name, _), _)| name == "raw_consume")
            .map(|(_, s)| s.iter().map(|s| s.seconds).collect())
            .unwrap_or_default(),
    );
    let raw_rate = shape.events as f64 / raw;
    let measurements = samples
        .into_iter()
        .map(|((_, name, workers), runs)| {
            let seconds = median(runs.iter().map(|s| s.seconds).collect());
            let optional = |values: Vec<f64>| (!values.is_empty()).then(|| median(values));
            let rss = optional(runs.iter().filter_map(|s| s.rss).collect());
            let dropped = optional(runs.iter().filter_map(|s| s.dropped).collect());
            let startup = optional(runs.iter().filter_map(|s| s.startup).collect());
            // Median over runs of the rate after start-up (not the ratio of medians).
            let after_start = optional(
                runs.iter()
                    .filter_map(|s| s.startup.map(|up| shape.events as f64 / (s.seconds - up)))
                    .collect(),
            );
            let rate = shape.events as f64 / seconds;
            KafkaMeasurement {
                name,
                workers,
                events: shape.events,
                runs: runs.len(),
                seconds,
                events_per_sec: rate,
                ratio_to_raw: rate / raw_rate,
                startup_s: startup,
                events_per_sec_after_start: after_start,
                peak_rss_mib: rss,
                dropped_late: dropped,
            }
        })
        .collect();
    Ok((shape, measurements))
}

/// Latency percentiles of one path, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyMeasurement {
    pub name: String,
    pub workers: usize,
    /// Offered rate, events/s, and for how long.
    pub rate: f64,
    pub seconds: f64,
    pub events: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// A cumulative count seen at a moment (ms since the measurement's start).
pub(crate) type Seen = Vec<(f64, u64)>;

/// Offers `rate` events/s for `seconds` to a fresh topic that a running pipeline (with PostgreSQL
/// when configured) reads, and measures from the outside when each event becomes visible: in the
/// view the API serves (`streampulse_view_events_total`, polled every 2 ms) and in PostgreSQL
/// (`sink_progress`, polled every 10 ms). Event `i` counts as visible once the count reaches
/// `i + 1`: exact within a partition, and across partitions as long as they keep pace, which they
/// do at a steady offered rate. The polling adds up to its interval to each figure; the first two
/// seconds (warm-up) are left out of the percentiles.
pub fn latency(
    bench: &KafkaBench,
    workers: usize,
    rate: f64,
    seconds: f64,
    log: &dyn Fn(String),
) -> Result<Vec<LatencyMeasurement>, String> {
    let topic = format!("{}-latency-{}", bench.topic, rand_suffix());
    let mut latency_bench = bench.clone();
    latency_bench.topic = topic.clone();
    let kafka = config(&latency_bench);
    kafka.create_topic(bench.partitions).map_err(err)?;
    let schema = format!("bench_latency_{}", rand_suffix());
    let run = Run::start(
        &latency_bench,
        workers,
        bench.postgres.as_ref().map(|_| schema.as_str()),
    )?;
    // Let the pipeline connect and settle before offering load.
    std::thread::sleep(Duration::from_secs(3));
    let total = (rate * seconds) as u64;
    log(format!(
        "offering {rate} events/s for {seconds} s ({total} events) to {topic} on {workers} worker(s)"
    ));
    let epoch = Instant::now();
    let ms = move || epoch.elapsed().as_secs_f64() * 1000.0;
    let done = std::sync::atomic::AtomicBool::new(false);
    let (sent, view_seen, pg_seen) = std::thread::scope(|scope| {
        let view_poll = scope.spawn(|| {
            let mut seen: Seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let count = run.metric("streampulse_view_events_total") as u64;
                seen.push((ms(), count));
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        });
        let pg_poll = scope.spawn(|| -> Result<Seen, String> {
            let mut seen: Seen = Vec::new();
            let Some(url) = &bench.postgres else {
                return Ok(seen);
            };
            let mut db = postgres::Client::connect(url, postgres::NoTls).map_err(err)?;
            let sql = format!(
                "SELECT coalesce(sum(next_offset), 0)::bigint FROM {schema}.sink_progress WHERE topic = $1"
            );
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let count = db
                    .query_one(&sql, &[&topic])
                    .map(|r| r.get::<_, i64>(0) as u64)
                    .unwrap_or(0);
                seen.push((ms(), count));
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(seen)
        });
        let sent = send_paced(&kafka, bench.seed, rate, total, &ms)?;
        // Wait until both sides have seen everything (at most 60 s more).
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let view_done = run.metric("streampulse_view_events_total") as u64 >= total;
            if view_done {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // PostgreSQL follows the view by up to the sink's longest commit interval (2 s) plus a
        // commit: give it 10 s.
        if bench.postgres.is_some() {
            std::thread::sleep(Duration::from_secs(10));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let view_seen = view_poll
            .join()
            .map_err(|_| "poller panicked".to_string())?;
        let pg_seen = pg_poll
            .join()
            .map_err(|_| "poller panicked".to_string())??;
        Ok::<_, String>((sent, view_seen, pg_seen))
    })?;
    drop(run);
    if let Some(url) = &bench.postgres {
        if let Ok(mut db) = postgres::Client::connect(url, postgres::NoTls) {
            let _ = db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
        }
    }
    let mut out = vec![percentiles(
        "event_to_view",
        workers,
        rate,
        seconds,
        &sent,
        &view_seen,
    )?];
    if bench.postgres.is_some() {
        out.push(percentiles(
            "event_to_postgres",
            workers,
            rate,
            seconds,
            &sent,
            &pg_seen,
        )?);
    }
    Ok(out)
}

/// Writes `total` clean events of the seeded generator to `kafka`'s topic at `rate` per second of
/// wall time (event `i` not before `i / rate` s, on the clock `ms`), stamped from now, and returns
/// when each was handed to the producer (ms on that clock). Flushes before it returns.
pub fn send_paced(
    kafka: &KafkaConfig,
    seed: u64,
    rate: f64,
    total: u64,
    ms: &dyn Fn() -> f64,
) -> Result<Vec<f64>, String> {
    let producer = Producer::new(kafka).map_err(err)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let generator = Generator::new(seed, Scenario::Clean, now_ms, rate);
    let encoder = Encoder::new();
    let mut sent = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = i as f64 * 1000.0 / rate;
        while ms() < due {
            std::thread::sleep(Duration::from_micros(200));
        }
        let event = generator.event(i);
        producer
            .send(&event.user_context.region, &encoder.encode(&event), None)
            .map_err(err)?;
        sent.push(ms());
    }
    producer.flush(Duration::from_secs(30)).map_err(err)?;
    Ok(sent)
}

/// Per event, the first poll at which the count covered it, minus when it was sent.
pub(crate) fn percentiles(
    name: &str,
    workers: usize,
    rate: f64,
    seconds: f64,
    sent: &[f64],
    seen: &Seen,
) -> Result<LatencyMeasurement, String> {
    let mut latencies = Vec::with_capacity(sent.len());
    let mut poll = 0;
    // The first two seconds warm the path up (connections, metadata, the first fetches): left out.
    let warmup = (rate * 2.0f64.min(seconds / 5.0)) as usize;
    for (i, &at) in sent.iter().enumerate() {
        while poll < seen.len() && seen[poll].1 < i as u64 + 1 {
            poll += 1;
        }
        let Some(&(visible, _)) = seen.get(poll) else {
            return Err(format!(
                "{name}: only {} of {} events became visible",
                seen.last().map_or(0, |s| s.1),
                sent.len()
            ));
        };
        if i >= warmup {
            latencies.push((visible - at).max(0.0));
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(LatencyMeasurement {
        name: name.to_string(),
        workers,
        rate,
        seconds,
        events: sent.len() as u64,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: *latencies.last().unwrap_or(&0.0),
    })
}
