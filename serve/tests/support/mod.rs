//! Shared helpers of the integration tests (`pipeline.rs`, `api.rs`, `faults.rs`), which run the
//! real `streampulse` binary, or its API in the test's own process, against the real Kafka broker
//! and PostgreSQL server started by `.ci/services up` (addresses from STREAMPULSE_BROKERS /
//! STREAMPULSE_POSTGRES, loopback defaults). The single home of:
//!
//! - addresses, unique names, a PostgreSQL client, a schema dropped when the test ends ([`Schema`]);
//! - topics: creating one, writing it (`streampulse generate`, or given records through
//!   [`produce`]), reading it back, its high watermarks;
//! - [`Pipeline`]: a `streampulse` process that is SIGKILLed when dropped, keeps its stderr and
//!   knows its API address (`--http 127.0.0.1:0`, read from the "API and dashboard on" log line);
//!   signals and exits; the processes of a cluster ([`cluster_process`]);
//! - progress: [`wait_caught_up`], committed offsets, the stored watermark;
//! - tables: snapshots of every table, the comparison with a golden snapshot and with the oracle
//!   (`dataflow::oracle::recompute` of the topic's records); the stat tables come from the
//!   product's own list ([`StatTable`], [`SUMS`]);
//! - [`http`]: a small HTTP client ([`request`], [`Reply`], [`health`]);
//! - [`in_process`]: the API served from the test's own process ([`ApiServer`]);
//! - [`relay`]: a TCP relay to PostgreSQL that a test can cut;
//! - [`services`]: taking one service away and bringing it back (fault tests only).
//!
//! Every wait here is bounded.
// Each test binary compiles this module and uses a subset of it: what one binary leaves unused is
// not dead code.
#![allow(dead_code, unused_imports)]

pub mod http;
pub mod in_process;
pub mod relay;
pub mod services;

pub use http::{get_json, health, http_get, request, Reply};
pub use in_process::{captured_log, ApiServer, InProcess};
pub use relay::{Relay, RelayMode};
pub use services::{assert_services_are_ours, serial, services, Outage, Service, SERVICES};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use streampulse::store::tables::{aggregate, SUMS};
use streampulse::store::StatTable;
use streampulse_dataflow::oracle::recompute;
use streampulse_dataflow::{Aggregate, Config, Derived, Key, Window, WindowKey};
use streampulse_ingest::{Decoder, Record};

pub const BIN: &str = env!("CARGO_BIN_EXE_streampulse");
/// A minute-aligned start (2023-11-14T22:14:00Z) so fault spans cover whole windows.
pub const START_MS: i64 = 28_333_334 * 60_000;
/// No partition goes idle during these runs: the final watermark is then a function of the topic.
pub const NEVER_IDLE: &str = "3600";

// ---------------------------------------------------------------------------------------------
// Addresses and names
// ---------------------------------------------------------------------------------------------

pub fn brokers() -> String {
    std::env::var("STREAMPULSE_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn postgres_url() -> String {
    std::env::var("STREAMPULSE_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/streampulse".into())
}

/// A name no other test or run uses (topics, schemas).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

pub fn pg() -> Client {
    Client::connect(&postgres_url(), NoTls).expect("PostgreSQL is up (run .ci/services up)")
}

/// Like [`pg`], retried for up to `timeout` (PostgreSQL may have just been restarted).
pub fn pg_within(timeout: Duration) -> Client {
    let deadline = Instant::now() + timeout;
    loop {
        match Client::connect(&postgres_url(), NoTls) {
            Ok(client) => return client,
            Err(e) if Instant::now() >= deadline => {
                panic!("PostgreSQL unreachable for {timeout:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

pub fn drop_schema(schema: &str) {
    pg().batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
}

/// A schema of the test's own, dropped (if it exists) when this goes out of scope, also when the
/// test fails: declare it before the processes that write into it, so they are gone first.
pub struct Schema(pub String);

impl Schema {
    pub fn new(prefix: &str) -> Schema {
        Schema(unique(prefix))
    }

    /// A session whose `search_path` is the schema.
    pub fn client(&self) -> Client {
        let mut client = pg();
        client
            .batch_execute(&format!("SET search_path TO {}", self.0))
            .unwrap();
        client
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut client) = Client::connect(&postgres_url(), NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0));
        }
    }
}

/// The rows of `sql`; fails the test on an error.
pub fn query(client: &mut Client, sql: &str) -> Vec<postgres::Row> {
    client
        .query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------------

/// Writes `count` events (seed 7, 3 partitions, 100 events/s of event time from [`START_MS`]).
pub fn generate(topic: &str, count: u64, scenario: &str, extra: &[&str]) {
    let status = Command::new(BIN)
        .args(["generate", "--brokers", &brokers(), "--topic", topic])
        .args(["--partitions", "3", "--count", &count.to_string()])
        .args(["--rate", "100", "--seed", "7", "--scenario", scenario])
        .args(["--start-ms", &START_MS.to_string()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .status()
        .expect("streampulse generate runs");
    assert!(status.success(), "generate failed");
}

/// Creates an empty topic with `partitions` partitions (`streampulse generate --count 0`).
pub fn create_topic(topic: &str, partitions: u32) {
    let status = Command::new(BIN)
        .args(["generate", "--brokers", &brokers(), "--topic", topic])
        .args(["--partitions", &partitions.to_string(), "--count", "0"])
        .env("RUST_LOG", "warn")
        .status()
        .expect("streampulse generate runs");
    assert!(status.success(), "creating topic {topic} failed");
}

/// A Kafka producer for records a test writes itself (poison, backlogs, one partition only).
pub struct Producer(BaseProducer);

impl Producer {
    pub fn new() -> Producer {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("linger.ms", "5")
            .create()
            .expect("a Kafka producer");
        Producer(producer)
    }

    /// Queues one record (key "k") for `partition`; `None` is a null value (a tombstone). Waits
    /// while the local queue is full.
    pub fn send(&self, topic: &str, partition: i32, value: Option<&[u8]>) {
        let mut record = BaseRecord::<str, [u8]>::to(topic)
            .key("k")
            .partition(partition);
        if let Some(value) = value {
            record = record.payload(value);
        }
        while let Err((_, back)) = self.0.send(record) {
            record = back;
            self.0.poll(Duration::from_millis(10));
        }
    }

    /// Waits until every queued record is written (30 s at most).
    pub fn flush(&self) {
        self.0
            .flush(Duration::from_secs(30))
            .expect("the records are written");
    }
}

/// Writes `events` (partition, value) in order.
pub fn produce(topic: &str, events: &[(i32, Vec<u8>)]) {
    let producer = Producer::new();
    for (partition, bytes) in events {
        producer.send(topic, *partition, Some(bytes));
    }
    producer.flush();
}

/// Next offset to be written, per partition.
pub fn high_watermarks(topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "streampulse-tests")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    (0..partitions)
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            (p, high)
        })
        .collect()
}

/// Every record of the topic, decoded, in offset order per partition, and how many did not decode.
pub fn read_topic(
    topic: &str,
    mut decode: impl FnMut(&[u8]) -> Option<streampulse_ingest::Event>,
) -> (Vec<Record>, usize) {
    let highs = high_watermarks(topic);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "streampulse-tests")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for &p in highs.keys() {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let total: i64 = highs.values().sum();
    let (mut records, mut bad, mut seen) = (Vec::new(), 0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < total && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            seen += 1;
            match decode(m.payload().unwrap_or(&[])) {
                Some(event) => records.push(Record {
                    partition: m.partition() as u32,
                    offset: m.offset(),
                    event,
                }),
                None => bad += 1,
            }
        }
    }
    assert_eq!(seen, total, "read the whole topic");
    records.sort_by_key(|r| (r.partition, r.offset));
    (records, bad)
}

pub fn decode_avro(bytes: &[u8]) -> Option<streampulse_ingest::Event> {
    Decoder::new().decode(bytes).ok()
}

// ---------------------------------------------------------------------------------------------
// The pipeline process
// ---------------------------------------------------------------------------------------------

/// Lines of a process's stderr kept for failure messages (the newest).
const LOG_LINES: usize = 4000;

/// A running `streampulse` process: SIGKILLed and reaped when dropped, so a failing test leaves
/// nothing behind. Its stderr is kept (the last [`LOG_LINES`] lines).
pub struct Pipeline {
    pub label: String,
    child: Child,
    /// Where its HTTP API listens (None for a process that does not serve it).
    pub api: Option<SocketAddr>,
    log: Arc<Mutex<VecDeque<String>>>,
    /// Set once its stderr has ended: every line it wrote is in `log`.
    log_complete: Arc<AtomicBool>,
    exit: Option<ExitStatus>,
}

/// `run --source kafka` arguments for `topic` into `schema` of `url`, with the API on a free port.
pub fn kafka_run_args(url: &str, topic: &str, schema: &str, idle_timeout: &str) -> Vec<String> {
    [
        "run",
        "--source",
        "kafka",
        "--brokers",
        &brokers(),
        "--topic",
        topic,
        "--postgres",
        url,
        "--pg-schema",
        schema,
        "--http",
        "127.0.0.1:0",
        "--idle-timeout",
        idle_timeout,
    ]
    .map(String::from)
    .to_vec()
}

/// A fresh host file naming `processes` free loopback ports, one line per process.
pub fn hostfile(processes: usize) -> PathBuf {
    let listeners: Vec<TcpListener> = (0..processes)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let lines: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let path = std::env::temp_dir().join(format!("{}.hosts", unique("cluster")));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Process `index` of a 2-process cluster (`-w 1 -n 2`, host file `hosts`) reading `topic` into
/// `schema`. Only process 0 serves the API, so only its start waits for it: start process 1
/// first.
pub fn cluster_process(
    topic: &str,
    schema: &str,
    idle_timeout: &str,
    hosts: &std::path::Path,
    index: usize,
    extra: &[String],
) -> Pipeline {
    let mut args = kafka_run_args(&postgres_url(), topic, schema, idle_timeout);
    args.extend(["-w", "1", "-n", "2", "-p"].map(String::from));
    args.push(index.to_string());
    args.extend(["--hostfile".to_string(), hosts.display().to_string()]);
    args.extend(extra.iter().cloned());
    Pipeline::spawn(&format!("{schema} process {index}"), &args, index == 0)
}

impl Pipeline {
    /// `streampulse run --source kafka` of `topic` into `schema` (never idle), plus `extra` flags;
    /// returns once the API listens.
    pub fn start(topic: &str, schema: &str, extra: &[&str]) -> Pipeline {
        Pipeline::start_with(&postgres_url(), topic, schema, NEVER_IDLE, extra)
    }

    /// Like [`Pipeline::start`], with the database at `url` and the given `--idle-timeout`.
    pub fn start_with(
        url: &str,
        topic: &str,
        schema: &str,
        idle_timeout: &str,
        extra: &[&str],
    ) -> Pipeline {
        let mut args = kafka_run_args(url, topic, schema, idle_timeout);
        args.extend(extra.iter().map(|s| s.to_string()));
        Pipeline::spawn(schema, &args, true)
    }

    /// Runs `streampulse ARGS`. With `serves_api`, waits (60 s at most) for the API's address.
    /// STREAMPULSE_* variables of the test's environment are removed: every flag also reads one,
    /// and only the arguments may configure the run.
    pub fn spawn(label: &str, args: &[String], serves_api: bool) -> Pipeline {
        let mut command = Command::new(BIN);
        command.args(args);
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
            .expect("streampulse starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let log_complete = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let (log, complete) = (log.clone(), log_complete.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some((_, addr)) = line.split_once("API and dashboard on http://") {
                        let _ = tx.send(addr.trim().parse::<SocketAddr>().ok());
                    }
                    let mut log = log.lock().unwrap();
                    if log.len() == LOG_LINES {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
                complete.store(true, Ordering::SeqCst);
            });
        }
        let mut pipeline = Pipeline {
            label: label.to_string(),
            child,
            api: None,
            log,
            log_complete,
            exit: None,
        };
        if serves_api {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(Some(addr)) => pipeline.api = Some(addr),
                _ => {
                    // Stderr closed early means it exited: give it a moment to be reaped.
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while pipeline.alive() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    let exit = pipeline.exit_status();
                    panic!(
                        "{}: the API did not start within 60 s (exit: {exit:?})\n{}",
                        pipeline.label,
                        pipeline.log_tail(60)
                    )
                }
            }
        }
        pipeline
    }

    /// The exit status once it has exited (without blocking).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    pub fn alive(&mut self) -> bool {
        self.exit_status().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// Sends `signal` (`TERM`, `INT`, …) with kill(1); fails the test if it cannot be sent.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "{}: kill -{signal}", self.label);
    }

    /// Waits for it to exit by itself, up to `timeout`; then every line of its stderr is in the
    /// log. Fails the test (after a SIGKILL) if it is still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.exit_status() {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{}: did not exit within {timeout:?}\n{}",
                    self.label,
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader ends at EOF, right after the exit (the process starts no children).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log_complete.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        status
    }

    /// SIGTERM (a clean shutdown), then wait up to `timeout`; SIGKILL after that. Returns whether
    /// it exited by itself in time.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        if !self.alive() {
            return true;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
        false
    }

    /// Its resident memory in KiB (`VmRSS`); fails the test once it has exited.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("{} is not running: {e}", self.label));
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("VmRSS");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Every line of its stderr that is kept (the last [`LOG_LINES`]).
    pub fn log(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter().map(|l| format!("{l}\n")).collect()
    }

    /// The last `lines` lines of its stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap();
        let skip = log.len().saturating_sub(lines);
        let tail: Vec<&str> = log.iter().skip(skip).map(String::as_str).collect();
        format!(
            "--- {} (last {} lines)\n{}",
            self.label,
            tail.len(),
            tail.join("\n")
        )
    }

    /// Lines of its stderr (of those kept) that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    pub fn api(&self) -> SocketAddr {
        self.api
            .unwrap_or_else(|| panic!("{} does not serve the API", self.label))
    }

    /// `GET /health` as JSON.
    pub fn health(&self) -> Result<Value, String> {
        health(self.api())
    }

    /// Polls `/health` until `check` accepts it; the last answer (or error) when `timeout` passes.
    pub fn wait_health(
        &self,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.health();
            if answer.as_ref().is_ok_and(&check) {
                return answer;
            }
            if Instant::now() >= deadline {
                return Err(match answer {
                    Ok(body) => format!("last /health: {body}"),
                    Err(e) => format!("last /health failed: {e}"),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Like [`Pipeline::wait_health`], failing the test (with its log) when `timeout` passes.
    pub fn expect_health(&self, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        self.wait_health(timeout, check).unwrap_or_else(|last| {
            panic!(
                "{}: /health never satisfied the check within {timeout:?}; {last}\n{}",
                self.label,
                self.log_tail(40)
            )
        })
    }

    /// A counter or gauge from `/metrics` (the first sample whose name and labels start so).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (status, body) = http_get(self.api(), "/metrics").ok()?;
        (status == 200).then_some(())?;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------------------------

/// Waits until the sink has committed every partition up to its high watermark, failing (with the
/// processes' logs) after `timeout` or when any of `processes` exits.
pub fn wait_caught_up(
    schema: &str,
    topic: &str,
    processes: &mut [&mut Pipeline],
    timeout: Duration,
) {
    let highs = high_watermarks(topic);
    let deadline = Instant::now() + timeout;
    let mut client: Option<Client> = None;
    let logs = |processes: &[&mut Pipeline]| -> String {
        let tails: Vec<String> = processes.iter().map(|p| p.log_tail(40)).collect();
        tails.join("\n")
    };
    let mut done: BTreeMap<i32, i64> = BTreeMap::new();
    loop {
        let exited = processes
            .iter_mut()
            .find_map(|p| Some((p.label.clone(), p.exit_status()?)));
        if let Some((label, status)) = exited {
            panic!(
                "{label} exited early ({status}) before catching up:\n{}",
                logs(processes)
            );
        }
        if client.is_none() {
            client = Client::connect(&postgres_url(), NoTls).ok();
        }
        if let Some(c) = client.as_mut() {
            let sql = format!(
                "SELECT partition, next_offset FROM {schema}.sink_progress WHERE topic = $1"
            );
            match c.query(&sql, &[&topic]) {
                Ok(rows) => done = rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
                Err(e) if e.is_closed() => client = None,
                Err(_) => {} // not created yet
            }
        }
        if highs.iter().all(|(p, h)| *h == 0 || done.get(p) == Some(h)) {
            // The watermark and is_final flags land in the same transaction; give a last idle tick.
            std::thread::sleep(Duration::from_millis(500));
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "not caught up after {timeout:?}: {done:?} of {highs:?}\n{}",
                logs(processes)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Records committed so far (sum of resume offsets); 0 before the schema exists.
pub fn committed_offsets(schema: &str, topic: &str) -> i64 {
    pg().query(
        &format!("SELECT next_offset FROM {schema}.sink_progress WHERE topic = $1"),
        &[&topic],
    )
    .map(|rows| rows.iter().map(|r| r.get::<_, i64>(0)).sum())
    .unwrap_or(0)
}

/// The watermark (ms) the sink stored for `topic`, once it has written one.
pub fn stored_watermark(schema: &str, topic: &str) -> Option<i64> {
    pg().query_one(
        &format!(
            "SELECT (extract(epoch FROM min(watermark)) * 1000)::bigint FROM {schema}.sink_progress WHERE topic = $1"
        ),
        &[&topic],
    )
    .ok()
    .and_then(|r| r.get(0))
}

// ---------------------------------------------------------------------------------------------
// Tables: snapshots, the golden comparison, the oracle
// ---------------------------------------------------------------------------------------------

/// Every table as sorted rows of JSON text, without the columns that record wall-clock time.
pub type Tables = BTreeMap<String, Vec<String>>;

/// Columns that record when something happened on the wall clock: never equal between runs.
pub const WALL_CLOCK_COLUMNS: [&str; 3] = ["updated_at", "raised_at", "received_at"];

/// The tables besides the stat tables, with the columns their rows are ordered by.
const OTHER_TABLES: [(&str, &str); 5] = [
    ("trending", "window_start, rank"),
    ("alerts", "id"),
    ("dead_letters", "topic, partition, kafka_offset"),
    ("event_log", "topic, partition, kafka_offset"),
    ("sink_progress", "topic, partition"),
];

/// Every table of `schema` (the stat tables of [`StatTable::ALL`] and the others), without the
/// [`WALL_CLOCK_COLUMNS`].
pub fn snapshot(schema: &str) -> Tables {
    snapshot_without(schema, &[])
}

/// Like [`snapshot`], without `columns` either (wherever a table has them).
pub fn snapshot_without(schema: &str, columns: &[&str]) -> Tables {
    let mut client = pg();
    let stat_tables = StatTable::ALL.map(|table| {
        let order: Vec<&str> = std::iter::once("window_start")
            .chain(table.keys().iter().map(|(name, _)| *name))
            .collect();
        (table.name(), order.join(", "))
    });
    let others = OTHER_TABLES.map(|(table, order)| (table, order.to_string()));
    let dropped: String = WALL_CLOCK_COLUMNS
        .iter()
        .chain(columns)
        .map(|c| format!(" - '{c}'"))
        .collect();
    let mut out = BTreeMap::new();
    for (table, order) in stat_tables.into_iter().chain(others) {
        let sql =
            format!("SELECT (to_jsonb(t){dropped})::text FROM {schema}.{table} t ORDER BY {order}");
        let rows = query(&mut client, &sql);
        out.insert(
            table.to_string(),
            rows.iter().map(|r| r.get::<_, String>(0)).collect(),
        );
    }
    out
}

/// Rows in one snapshot and not the other, per table (at most `per_table` of each table).
pub fn table_differences(golden: &Tables, other: &Tables, per_table: usize) -> Vec<String> {
    let mut differences = Vec::new();
    for (table, rows) in golden {
        let g: BTreeSet<&String> = rows.iter().collect();
        let o: BTreeSet<&String> = other.get(table).into_iter().flatten().collect();
        for row in g.symmetric_difference(&o).take(per_table) {
            let side = if g.contains(row) {
                "only golden"
            } else {
                "only in this run"
            };
            differences.push(format!("{table} ({side}): {row}"));
        }
        if rows.len() != other.get(table).map_or(0, Vec::len) {
            differences.push(format!(
                "{table}: {} rows golden, {} in this run",
                rows.len(),
                other.get(table).map_or(0, Vec::len)
            ));
        }
    }
    differences
}

/// Asserts that `schema` holds exactly the golden tables.
pub fn assert_same_tables(golden: &Tables, schema: &str, what: &str) {
    let differences = table_differences(golden, &snapshot(schema), 4);
    assert!(
        differences.is_empty(),
        "{what}: tables differ from the golden run's:\n{}",
        differences.join("\n")
    );
}

/// The stat rows stored in a schema, as the dataflow's keys and sums.
pub fn stored_stats(schema: &str) -> BTreeMap<WindowKey, Aggregate> {
    let mut client = pg();
    let sums = SUMS.join(", ");
    let mut out = BTreeMap::new();
    for table in StatTable::ALL {
        let sql = format!(
            "SELECT (extract(epoch FROM window_start) * 1000)::bigint, {}, {sums} FROM {schema}.{}",
            table.key_columns_as_text(),
            table.name()
        );
        for row in query(&mut client, &sql) {
            let key = table
                .key_from_text(row.get(1), row.get(2))
                .unwrap_or_else(|e| panic!("{}: {e}", table.name()));
            let values: [i64; 7] = std::array::from_fn(|i| row.get(3 + i));
            out.insert(
                WindowKey {
                    window: Window(row.get(0)),
                    key,
                },
                aggregate(values),
            );
        }
    }
    out
}

/// Checks every stored table of `schema` against the recomputation from the topic's records
/// (and that the records raised alerts, so the alert comparison compared something).
pub fn assert_tables_match_oracle(schema: &str, records: &[Record]) {
    let expected = recompute(records, &Config::default());
    let stored = stored_stats(schema);
    assert_eq!(stored.len(), expected.stats.len(), "number of stat rows");
    for (row, agg) in &expected.stats {
        assert_eq!(stored.get(row), Some(agg), "{row:?}");
    }
    let mut client = pg();
    let mut derived = BTreeSet::new();
    for r in query(&mut client, &format!(
        "SELECT (extract(epoch FROM window_start) * 1000)::bigint, rank, content_id, title, downloads FROM {schema}.trending"
    )) {
        derived.insert(format!("top {} {} {} {}", r.get::<_, i64>(0), r.get::<_, i32>(1), r.get::<_, String>(2), r.get::<_, i64>(4)));
    }
    for r in query(&mut client, &format!(
        "SELECT (extract(epoch FROM window_start) * 1000)::bigint, unique_content FROM {schema}.window_totals"
    )) {
        derived.insert(format!("unique {} {}", r.get::<_, i64>(0), r.get::<_, i64>(1)));
    }
    for r in query(&mut client, &format!(
        "SELECT (extract(epoch FROM window_start) * 1000)::bigint, alert_type, region, severity, score FROM {schema}.alerts"
    )) {
        let score = r.get::<_, Option<f64>>(4).map_or("-".to_string(), |s| format!("{s:.6}"));
        derived.insert(format!("alert {} {} {} {} {score}", r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, String>(2), r.get::<_, String>(3)));
    }
    for r in query(
        &mut client,
        &format!(
            "SELECT (extract(epoch FROM window_start) * 1000)::bigint, region, baseline_windows,
                baseline_downloads, baseline_downloads_sq::text, baseline_failed, downloads, failed
         FROM {schema}.region_baselines"
        ),
    ) {
        derived.insert(format!(
            "baseline {} {} {} {} {} {} {} {}",
            r.get::<_, i64>(0),
            r.get::<_, String>(1),
            r.get::<_, i32>(2),
            r.get::<_, i64>(3),
            r.get::<_, String>(4),
            r.get::<_, i64>(5),
            r.get::<_, i64>(6),
            r.get::<_, i64>(7)
        ));
    }
    for r in query(
        &mut client,
        &format!(
            "SELECT (extract(epoch FROM window_start) * 1000)::bigint, region, error_code,
                baseline_windows, baseline_downloads, baseline_failures, downloads, failures
             FROM {schema}.error_baselines"
        ),
    ) {
        derived.insert(format!(
            "code {} {} {} {} {} {} {} {}",
            r.get::<_, i64>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, i32>(3),
            r.get::<_, i64>(4),
            r.get::<_, i64>(5),
            r.get::<_, i64>(6),
            r.get::<_, i64>(7)
        ));
    }
    for r in query(
        &mut client,
        &format!(
            "SELECT (extract(epoch FROM window_start) * 1000)::bigint, rank, content_id, history,
                predicted_downloads, rising_score
         FROM {schema}.trending_predictions"
        ),
    ) {
        derived.insert(format!(
            "rising {} {} {} {:?} {:.3} {:.3}",
            r.get::<_, i64>(0),
            r.get::<_, i32>(1),
            r.get::<_, String>(2),
            r.get::<_, Vec<i64>>(3),
            r.get::<_, f64>(4),
            r.get::<_, f64>(5)
        ));
    }
    let wanted: BTreeSet<String> = expected
        .derived
        .iter()
        .map(|d| match d {
            Derived::Top {
                window,
                rank,
                content_id,
                downloads,
                ..
            } => format!("top {} {rank} {content_id} {downloads}", window.0),
            Derived::UniqueContent { window, count } => format!("unique {} {count}", window.0),
            Derived::Alert(a) => format!(
                "alert {} {} {} {} {}",
                a.window.0,
                a.rule.name(),
                a.region,
                a.severity.name(),
                a.score().map_or("-".to_string(), |s| format!("{s:.6}"))
            ),
            Derived::Baseline {
                window,
                region,
                baseline: b,
            } => format!(
                "baseline {} {region} {} {} {} {} {} {}",
                window.0,
                b.windows,
                b.downloads,
                b.downloads_sq,
                b.failed,
                b.observed.downloads,
                b.observed.failed
            ),
            Derived::ErrorBaseline {
                window,
                region,
                error_code,
                baseline: b,
            } => format!(
                "code {} {region} {error_code} {} {} {} {} {}",
                window.0, b.windows, b.downloads, b.failed, b.observed.downloads, b.observed.failed
            ),
            Derived::Rising {
                window,
                rank,
                content_id,
                forecast: f,
                ..
            } => format!(
                "rising {} {rank} {content_id} {:?} {:.3} {:.3}",
                window.0,
                f.history,
                f.next(),
                f.rising()
            ),
        })
        .collect();
    let missing: Vec<_> = wanted.difference(&derived).take(5).collect();
    let extra: Vec<_> = derived.difference(&wanted).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}\nextra {extra:?}"
    );
    for kind in ["alert", "baseline", "code", "rising"] {
        assert!(
            wanted.iter().any(|d| d.starts_with(kind)),
            "the topic has {kind} rows to compare"
        );
    }
}

/// The golden run of a topic: one uninterrupted single-worker run into a fresh schema, checked
/// against the oracle; returns its tables (the schema is dropped).
pub fn golden_tables(topic: &str, records: &[Record]) -> Tables {
    let schema = unique("golden");
    let mut run = Pipeline::start(topic, &schema, &[]);
    wait_caught_up(&schema, topic, &mut [&mut run], Duration::from_secs(180));
    run.kill();
    assert_tables_match_oracle(&schema, records);
    let tables = snapshot(&schema);
    drop_schema(&schema);
    tables
}

/// Every good record is counted: accepted plus late equals the records decoded from the topic,
/// and the stat tables are exactly the recomputation's.
pub fn assert_tables_match_oracle_counts(schema: &str, records: &[Record]) {
    let stored = stored_stats(schema);
    let total: i64 = stored
        .iter()
        .filter(|(k, _)| matches!(k.key, Key::Total | Key::Late { .. }))
        .map(|(_, a)| a.downloads)
        .sum();
    assert_eq!(total, records.len() as i64);
    let expected = recompute(records, &Config::default());
    assert_eq!(stored, expected.stats);
}
