//! Shared helpers of the integration tests that run the real `streampulse` binary against the real
//! Kafka broker and PostgreSQL server started by `.ci/services up` (addresses from
//! STREAMPULSE_BROKERS / STREAMPULSE_POSTGRES, loopback defaults). The single home of:
//!
//! - addresses, unique names, a PostgreSQL client;
//! - writing a topic (`streampulse generate`), reading it back, its high watermarks;
//! - [`Pipeline`]: a `streampulse run` process that is SIGKILLed when dropped, keeps its stderr and
//!   knows its API address (`--http 127.0.0.1:0`, read from the "API and dashboard on" log line);
//! - [`wait_caught_up`], snapshots of every table, the comparison with a golden snapshot and with
//!   the oracle (`dataflow::oracle::recompute` of the topic's records);
//! - HTTP GET and `/health` over a plain `TcpStream`;
//! - taking one service away and bringing it back (`.ci/services stop|start`), with a guard
//!   ([`Outage`]) that restarts it even when the test fails midway, and the lock ([`serial`]) that
//!   keeps such tests from overlapping within a test binary.
//!
//! Every wait here is bounded. Each test binary uses a subset, hence `allow(dead_code)`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use streampulse_dataflow::oracle::recompute;
use streampulse_dataflow::{Aggregate, Config, Derived, Key, Window, WindowKey};
use streampulse_ingest::{Decoder, Record};

pub const BIN: &str = env!("CARGO_BIN_EXE_streampulse");
/// The services script the fault tests drive.
pub const SERVICES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/services");
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

impl Pipeline {
    /// `streampulse run --source kafka` of `topic` into `schema` (never idle), plus `extra` flags;
    /// returns once the API listens.
    pub fn start(topic: &str, schema: &str, extra: &[&str]) -> Pipeline {
        let mut args = kafka_run_args(&postgres_url(), topic, schema, NEVER_IDLE);
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
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
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
            });
        }
        let mut pipeline = Pipeline {
            label: label.to_string(),
            child,
            api: None,
            log,
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

// ---------------------------------------------------------------------------------------------
// Tables: snapshots, the golden comparison, the oracle
// ---------------------------------------------------------------------------------------------

/// Every table as sorted rows of JSON text, without the columns that record wall-clock time.
pub type Tables = BTreeMap<String, Vec<String>>;

pub fn snapshot(schema: &str) -> Tables {
    let mut client = pg();
    let tables = [
        ("content_stats", "window_start, content_id, title"),
        ("region_health", "window_start, region"),
        ("device_stats", "window_start, device, os_version"),
        ("error_stats", "window_start, region, error_code"),
        ("window_totals", "window_start"),
        ("late_events", "window_start, partition"),
        ("trending", "window_start, rank"),
        ("alerts", "id"),
        ("dead_letters", "topic, partition, kafka_offset"),
        ("event_log", "topic, partition, kafka_offset"),
        ("sink_progress", "topic, partition"),
    ];
    let mut out = BTreeMap::new();
    for (table, order) in tables {
        let sql = format!(
            "SELECT (to_jsonb(t) - 'updated_at' - 'raised_at' - 'received_at')::text FROM {schema}.{table} t ORDER BY {order}"
        );
        let rows = client.query(&sql, &[]).unwrap();
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

fn rows(client: &mut Client, sql: &str) -> Vec<postgres::Row> {
    client.query(sql, &[]).unwrap()
}

/// The stat rows stored in a schema, as the dataflow's keys and sums.
pub fn stored_stats(schema: &str) -> BTreeMap<WindowKey, Aggregate> {
    let mut client = pg();
    let sums = "downloads, successful, failed, size_mb, duration_s, speed_milli, cdn_timeouts";
    let mut out = BTreeMap::new();
    let tables = [
        ("window_totals", "''::text, ''::text"),
        ("content_stats", "content_id, title"),
        ("region_health", "region, ''::text"),
        ("device_stats", "device, os_version"),
        ("error_stats", "region, error_code"),
        ("late_events", "partition::text, ''::text"),
    ];
    for (table, keys) in tables {
        let sql = format!(
            "SELECT (extract(epoch FROM window_start) * 1000)::bigint, {keys}, {sums} FROM {schema}.{table}"
        );
        for row in rows(&mut client, &sql) {
            let (a, b): (String, String) = (row.get(1), row.get(2));
            let key = match table {
                "window_totals" => Key::Total,
                "content_stats" => Key::Content {
                    content_id: a,
                    title: b,
                },
                "region_health" => Key::Region(a),
                "device_stats" => Key::Device {
                    device: a,
                    os_version: b,
                },
                "error_stats" => Key::Error {
                    region: a,
                    error_code: b,
                },
                _ => Key::Late {
                    partition: a.parse().unwrap(),
                },
            };
            let agg = Aggregate {
                downloads: row.get(3),
                successful: row.get(4),
                failed: row.get(5),
                size_mb: row.get(6),
                duration_s: row.get(7),
                speed_milli: row.get(8),
                cdn_timeouts: row.get(9),
            };
            out.insert(
                WindowKey {
                    window: Window(row.get(0)),
                    key,
                },
                agg,
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
    for r in rows(&mut client, &format!(
        "SELECT (extract(epoch FROM window_start) * 1000)::bigint, rank, content_id, title, downloads FROM {schema}.trending"
    )) {
        derived.insert(format!("top {} {} {} {}", r.get::<_, i64>(0), r.get::<_, i32>(1), r.get::<_, String>(2), r.get::<_, i64>(4)));
    }
    for r in rows(&mut client, &format!(
        "SELECT (extract(epoch FROM window_start) * 1000)::bigint, unique_content FROM {schema}.window_totals"
    )) {
        derived.insert(format!("unique {} {}", r.get::<_, i64>(0), r.get::<_, i64>(1)));
    }
    for r in rows(&mut client, &format!(
        "SELECT (extract(epoch FROM window_start) * 1000)::bigint, alert_type, region, severity FROM {schema}.alerts"
    )) {
        derived.insert(format!("alert {} {} {} {}", r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, String>(2), r.get::<_, String>(3)));
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
                "alert {} {} {} {}",
                a.window.0,
                a.rule.name(),
                a.region,
                a.severity.name()
            ),
        })
        .collect();
    let missing: Vec<_> = wanted.difference(&derived).take(5).collect();
    let extra: Vec<_> = derived.difference(&wanted).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}\nextra {extra:?}"
    );
    assert!(
        wanted.iter().any(|d| d.starts_with("alert")),
        "the scenario raised alerts"
    );
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

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// One `GET` on a fresh connection (`Connection: close`): status and body. Connect within 2 s,
/// the whole answer within 5 s.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|_| stream.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete response head")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let body = &raw[split + 4..];
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || body.len() < end + 2 + size {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[(end + 4 + size).min(body.len())..];
    }
    out
}

/// `GET /health` parsed as JSON, whatever the status code (a degraded answer may be a 503).
pub fn health(addr: SocketAddr) -> Result<Value, String> {
    let (status, body) = http_get(addr, "/health")?;
    serde_json::from_str(&body).map_err(|e| format!("/health {status} is not JSON ({e}): {body}"))
}

// ---------------------------------------------------------------------------------------------
// Services: one at a time away, always brought back
// ---------------------------------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

/// Tests that take services away hold this for their whole run, so they never overlap within a
/// binary (run such a binary alone: other binaries' tests would see the outages too). A test that
/// failed poisons nothing: the next one just takes the lock.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Kafka,
    Postgres,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Kafka => "kafka",
            Service::Postgres => "postgres",
        }
    }
}

/// Runs `.ci/services ARGS`, killing it after `timeout`; its output is returned on failure and
/// printed (captured by the test harness) on success.
pub fn services(args: &[&str], timeout: Duration) -> Result<(), String> {
    let mut child = Command::new(SERVICES)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{SERVICES}: {e}"))?;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The broker it starts inherits no pipe of ours (it redirects to its log), so this ends.
    let text = stderr.join().unwrap_or_default() + &stdout.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => {
            eprint!("{text}");
            Ok(())
        }
        Some(s) => Err(format!("services {args:?}: {s}\n{text}")),
        None => Err(format!(
            "services {args:?}: no answer in {timeout:?}\n{text}"
        )),
    }
}

/// Fails unless `.ci/services` manages the very broker and database the tests talk to (the
/// script reads KAFKA_PORT / PGPORT / STREAMPULSE_STATE; the tests STREAMPULSE_BROKERS /
/// STREAMPULSE_POSTGRES): stopping "the" broker must stop ours, never someone else's.
pub fn assert_services_are_ours() {
    let output = Command::new(SERVICES)
        .arg("env")
        .output()
        .expect("runs .ci/services env");
    let text = String::from_utf8_lossy(&output.stdout);
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(str::to_string)
    };
    assert_eq!(
        (var("STREAMPULSE_BROKERS"), var("STREAMPULSE_POSTGRES")),
        (Some(brokers()), Some(postgres_url())),
        ".ci/services (KAFKA_PORT, PGPORT, STREAMPULSE_STATE) must manage the services the tests use \
         (STREAMPULSE_BROKERS, STREAMPULSE_POSTGRES); eval \"$(.ci/services env)\" with the same settings"
    );
}

/// How long a service may take to stop or start before the test gives up.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(240);

/// A service taken away by a test. [`Outage::end`] starts it again and waits until it answers;
/// dropping an outage that was not ended (a failed assertion) starts it too.
pub struct Outage {
    pub service: Service,
    pub began: Instant,
    ended: bool,
}

impl Outage {
    /// Stops `service` (Kafka: a clean shutdown; PostgreSQL: `pg_ctl -m fast`).
    pub fn begin(service: Service) -> Outage {
        let outage = Outage {
            service,
            began: Instant::now(),
            ended: false,
        };
        // The guard exists before the stop: a stop that fails halfway is still undone.
        if let Err(e) = services(&["stop", service.name()], SERVICE_TIMEOUT) {
            panic!("stopping {}: {e}", service.name());
        }
        outage
    }

    /// Starts the service again and waits until it answers; returns how long it was away.
    pub fn end(mut self) -> Duration {
        self.ended = true;
        if let Err(e) = services(&["start", self.service.name()], SERVICE_TIMEOUT) {
            panic!("starting {} again: {e}", self.service.name());
        }
        self.began.elapsed()
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.ended {
            if let Err(e) = services(&["start", self.service.name()], SERVICE_TIMEOUT) {
                eprintln!("could not start {} again: {e}", self.service.name());
            }
        }
    }
}
