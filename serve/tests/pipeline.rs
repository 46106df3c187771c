//! Integration tests of the full pipeline against a real Kafka broker and a real PostgreSQL server
//! (started by `.ci/services up`; addresses from STREAMPULSE_BROKERS / STREAMPULSE_POSTGRES with
//! loopback defaults). Each test writes its own topic and its own PostgreSQL schema.
//!
//! - golden: the tables equal an independent recomputation from the topic's records;
//! - crash: SIGKILL at random moments and restarts end in tables identical to the golden run's;
//! - confluent: mixed v1/v2 writer schemas decode, poison records become dead letters;
//! - replay: a fresh schema replays the topic from the beginning into identical tables.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use streampulse_dataflow::oracle::recompute;
use streampulse_dataflow::{Aggregate, Config, Derived, Key, Window, WindowKey};
use streampulse_ingest::confluent::{ConfluentDecoder, SchemaRegistry};
use streampulse_ingest::{Decoder, Record};

const BIN: &str = env!("CARGO_BIN_EXE_streampulse");
/// A minute-aligned start (2023-11-14T22:14:00Z) so fault spans cover whole windows.
const START_MS: i64 = 28_333_334 * 60_000;

fn brokers() -> String {
    std::env::var("STREAMPULSE_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn postgres_url() -> String {
    std::env::var("STREAMPULSE_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/streampulse".into())
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

fn pg() -> Client {
    Client::connect(&postgres_url(), NoTls).expect("PostgreSQL is up (run .ci/services up)")
}

fn generate(topic: &str, count: u64, scenario: &str, extra: &[&str]) {
    let status = Command::new(BIN)
        .args([
            "generate",
            "--brokers",
            &brokers(),
            "--topic",
            topic,
            "--partitions",
            "3",
        ])
        .args([
            "--count",
            &count.to_string(),
            "--rate",
            "100",
            "--seed",
            "7",
            "--scenario",
            scenario,
        ])
        .args(["--start-ms", &START_MS.to_string()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .status()
        .expect("streampulse generate runs");
    assert!(status.success(), "generate failed");
}

/// No partition goes idle during these runs: the final watermark is then a function of the topic.
const NEVER_IDLE: &str = "3600";

fn start(topic: &str, schema: &str, extra: &[&str]) -> Child {
    start_with(&postgres_url(), topic, schema, NEVER_IDLE, extra)
}

fn start_with(url: &str, topic: &str, schema: &str, idle_timeout: &str, extra: &[&str]) -> Child {
    Command::new(BIN)
        .args([
            "run",
            "--source",
            "kafka",
            "--brokers",
            &brokers(),
            "--topic",
            topic,
        ])
        .args(["--postgres", url, "--pg-schema", schema])
        .args(if extra.contains(&"--http") {
            &[][..]
        } else {
            &["--http", "127.0.0.1:0"][..]
        })
        .args(["--idle-timeout", idle_timeout])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("streampulse run starts")
}

/// Next offset to be written, per partition.
fn high_watermarks(topic: &str) -> BTreeMap<i32, i64> {
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
            (
                p,
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1,
            )
        })
        .collect()
}

/// Every record of the topic, decoded, in offset order per partition, and how many did not decode.
fn read_topic(
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

/// Waits until the sink has committed every partition up to its high watermark.
fn wait_caught_up(schema: &str, topic: &str, child: &mut Child, timeout: Duration) {
    let highs = high_watermarks(topic);
    let deadline = Instant::now() + timeout;
    let mut client = pg();
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pipeline exited early"
        );
        let rows = client
            .query(
                &format!(
                    "SELECT partition, next_offset FROM {schema}.sink_progress WHERE topic = $1"
                ),
                &[&topic],
            )
            .unwrap_or_default();
        let done: BTreeMap<i32, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if highs.iter().all(|(p, h)| *h == 0 || done.get(p) == Some(h)) {
            // The watermark and is_final flags land in the same transaction; give a last idle tick.
            std::thread::sleep(Duration::from_millis(500));
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill(); // do not leave the pipeline running behind a failed test
            panic!("not caught up after {timeout:?}: {done:?} of {highs:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Records committed so far (sum of resume offsets).
fn committed_offsets(schema: &str, topic: &str) -> i64 {
    pg().query(
        &format!("SELECT next_offset FROM {schema}.sink_progress WHERE topic = $1"),
        &[&topic],
    )
    .map(|rows| rows.iter().map(|r| r.get::<_, i64>(0)).sum())
    .unwrap_or(0)
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Every table as sorted rows of text, without the columns that record wall-clock time.
fn snapshot(schema: &str) -> BTreeMap<String, Vec<String>> {
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
            "SELECT (to_jsonb(t) - 'updated_at' - 'raised_at' - 'received_at' - 'revised_at')::text FROM {schema}.{table} t ORDER BY {order}"
        );
        let rows = client.query(&sql, &[]).unwrap();
        out.insert(
            table.to_string(),
            rows.iter().map(|r| r.get::<_, String>(0)).collect(),
        );
    }
    out
}

fn ms(client: &mut Client, sql: &str) -> Vec<postgres::Row> {
    client.query(sql, &[]).unwrap()
}

/// The stat rows stored in a schema, as the dataflow's keys and sums.
fn stored_stats(schema: &str) -> BTreeMap<WindowKey, Aggregate> {
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
        for row in ms(&mut client, &sql) {
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

/// Checks every stored table of `schema` against the recomputation from the topic's records.
fn assert_tables_match_oracle(schema: &str, records: &[Record]) {
    let expected = recompute(records, &Config::default());
    let stored = stored_stats(schema);
    assert_eq!(stored.len(), expected.stats.len(), "number of stat rows");
    for (row, agg) in &expected.stats {
        assert_eq!(stored.get(row), Some(agg), "{row:?}");
    }
    let mut client = pg();
    let mut derived = BTreeSet::new();
    for r in ms(&mut client, &format!(
        "SELECT (extract(epoch FROM window_start) * 1000)::bigint, rank, content_id, title, downloads FROM {schema}.trending"
    )) {
        derived.insert(format!("top {} {} {} {}", r.get::<_, i64>(0), r.get::<_, i32>(1), r.get::<_, String>(2), r.get::<_, i64>(4)));
    }
    for r in ms(&mut client, &format!(
        "SELECT (extract(epoch FROM window_start) * 1000)::bigint, unique_content FROM {schema}.window_totals"
    )) {
        derived.insert(format!("unique {} {}", r.get::<_, i64>(0), r.get::<_, i64>(1)));
    }
    for r in ms(&mut client, &format!(
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
            } => {
                format!("top {} {rank} {content_id} {downloads}", window.0)
            }
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

fn decode_avro(bytes: &[u8]) -> Option<streampulse_ingest::Event> {
    Decoder::new().decode(bytes).ok()
}

/// Golden, crash and replay share one topic: the crash and replay runs must equal the golden one.
#[test]
fn golden_crash_and_replay() {
    let topic = unique("golden");
    generate(&topic, 60_000, "cdn-outage", &[]);
    let (records, bad) = read_topic(&topic, decode_avro);
    assert_eq!(bad, 0);
    assert!(
        records
            .iter()
            .map(|r| r.partition)
            .collect::<BTreeSet<_>>()
            .len()
            > 1,
        "several partitions"
    );

    // Golden: one uninterrupted run.
    let golden = unique("golden");
    let mut child = start(&topic, &golden, &[]);
    wait_caught_up(&golden, &topic, &mut child, Duration::from_secs(120));
    stop(child);
    assert_tables_match_oracle(&golden, &records);
    let golden_tables = snapshot(&golden);
    assert!(
        golden_tables["event_log"].len() > 100,
        "a sample of raw events is kept"
    );

    // Crash: SIGKILL at random moments, restart each time, on two workers.
    let crash = unique("crash");
    let mut seed = std::process::id() as u64;
    let mut killed_midway = 0;
    for round in 0..4 {
        // Reading is capped at 20 000 events/s so that a kill lands mid-run.
        let mut child = start(&topic, &crash, &["-w", "2", "--max-rate", "20000"]);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = 200 + (seed >> 33) % 2_000;
        std::thread::sleep(Duration::from_millis(wait));
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: the pipeline died by itself"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let committed = committed_offsets(&crash, &topic);
        eprintln!(
            "crash round {round}: killed after {wait} ms with {committed} of {} records committed",
            records.len()
        );
        if committed < records.len() as i64 {
            killed_midway += 1;
        }
    }
    assert!(
        killed_midway >= 2,
        "at least two kills must land before the run caught up"
    );
    let mut child = start(&topic, &crash, &["-w", "2"]);
    wait_caught_up(&crash, &topic, &mut child, Duration::from_secs(120));
    stop(child);
    let crash_tables = snapshot(&crash);
    let mut differences = Vec::new();
    for (table, rows) in &golden_tables {
        let (g, c): (BTreeSet<_>, BTreeSet<_>) =
            (rows.iter().collect(), crash_tables[table].iter().collect());
        for row in g.symmetric_difference(&c).take(4) {
            let side = if g.contains(row) {
                "only golden"
            } else {
                "only after crashes"
            };
            differences.push(format!("{table} ({side}): {row}"));
        }
    }
    assert!(
        differences.is_empty(),
        "tables differ after crashes:\n{}",
        differences.join("\n")
    );

    // Replay: a fresh schema starts from the beginning of the topic.
    let replay = unique("replay");
    let mut child = start(&topic, &replay, &[]);
    wait_caught_up(&replay, &topic, &mut child, Duration::from_secs(120));
    stop(child);
    assert_eq!(
        snapshot(&replay),
        golden_tables,
        "a replay equals the golden run"
    );

    let mut client = pg();
    for schema in [golden, crash, replay] {
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .unwrap();
    }
}

/// A minimal Schema Registry: GET /schemas/ids/{id}, POST /subjects/{subject}/versions.
fn registry() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let schemas: Arc<Mutex<Vec<String>>> = Arc::default();
    let shared = schemas.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut length = 0;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let mut schemas = shared.lock().unwrap();
            let (status, reply) = if method == "POST" {
                let text = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["schema"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let id = match schemas.iter().position(|s| *s == text) {
                    Some(i) => i + 1,
                    None => {
                        schemas.push(text);
                        schemas.len()
                    }
                };
                ("200 OK", serde_json::json!({ "id": id }).to_string())
            } else {
                let id: usize = path.rsplit('/').next().unwrap_or("").parse().unwrap_or(0);
                match schemas.get(id.wrapping_sub(1)) {
                    Some(text) => ("200 OK", serde_json::json!({ "schema": text }).to_string()),
                    None => (
                        "404 Not Found",
                        r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
                    ),
                }
            };
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len());
        }
    });
    (url, schemas)
}

#[test]
fn confluent_framing_with_mixed_schemas_and_poison_records() {
    let (registry_url, schemas) = registry();
    let topic = unique("confluent");
    generate(
        &topic,
        20_000,
        "clean",
        &[
            "--format",
            "confluent",
            "--registry",
            &registry_url,
            "--v2-share",
            "0.5",
        ],
    );
    assert_eq!(schemas.lock().unwrap().len(), 2, "v1 and v2 registered");

    // Poison records, written after the good ones, into partition 0.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let good = streampulse_ingest::confluent::ConfluentEncoder::new(
        1,
        streampulse_ingest::confluent::SchemaVersion::V1,
    )
    .encode(
        &streampulse_ingest::Generator::new(
            1,
            streampulse_ingest::Scenario::Clean,
            START_MS,
            100.0,
        )
        .event(1),
    );
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let mut wrong_magic = good.clone();
    wrong_magic[0] = 7;
    let mut unknown_id = good.clone();
    unknown_id[1..5].copy_from_slice(&999u32.to_be_bytes());
    let poison: [(&str, Vec<u8>); 4] = [
        ("garbage", b"{\"not\": \"avro\"}".to_vec()),
        ("truncated", truncated),
        ("magic", wrong_magic),
        ("unknown", unknown_id),
    ];
    for (_, bytes) in &poison {
        producer
            .send(
                BaseRecord::to(&topic)
                    .key("poison")
                    .payload(bytes)
                    .partition(0),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let mut decoder = ConfluentDecoder::new(SchemaRegistry::new(&registry_url).unwrap());
    let (records, bad) = read_topic(&topic, |b| decoder.decode(b).ok());
    assert_eq!((records.len(), bad), (20_000, 4));

    // This run also talks TLS to PostgreSQL (`sslmode=require`; .ci/services enables TLS).
    let schema = unique("confluent");
    let tls_url = format!("{}?sslmode=require", postgres_url());
    let args = ["--format", "confluent", "--registry", &registry_url];
    let mut child = start_with(&tls_url, &topic, &schema, NEVER_IDLE, &args);
    wait_caught_up(&schema, &topic, &mut child, Duration::from_secs(120));
    let encrypted: i64 = pg()
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE s.ssl AND a.application_name = 'streampulse'",
            &[],
        )
        .unwrap()
        .get(0);
    stop(child);
    assert!(encrypted >= 1, "the sink's session is encrypted");

    let mut client = pg();
    let dead = ms(
        &mut client,
        &format!(
            "SELECT kafka_offset, reason, raw FROM {schema}.dead_letters ORDER BY kafka_offset"
        ),
    );
    assert_eq!(dead.len(), 4, "every poison record is a dead letter");
    let reasons: Vec<String> = dead
        .iter()
        .map(|r| r.get::<_, String>(1).to_lowercase())
        .collect();
    assert!(reasons[0].contains("magic"), "garbage: {}", reasons[0]);
    assert!(
        reasons[1].contains("decode") || reasons[1].contains("datum"),
        "truncated: {}",
        reasons[1]
    );
    assert!(reasons[2].contains("magic"), "wrong magic: {}", reasons[2]);
    assert!(
        reasons[3].contains("999"),
        "unknown schema id: {}",
        reasons[3]
    );
    assert_eq!(
        dead[1].get::<_, Vec<u8>>(2),
        poison[1].1,
        "raw bytes are kept"
    );
    assert_tables_match_oracle_counts(&schema, &records);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}

/// Every good record is counted: accepted plus late equals the records decoded from the topic.
fn assert_tables_match_oracle_counts(schema: &str, records: &[Record]) {
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

/// A worker whose only partition never receives data must not stall the others: after the idle
/// timeout it follows their watermark, and everything is committed.
#[test]
fn an_empty_partition_does_not_stall_the_pipeline() {
    let topic = unique("idle");
    let status = Command::new(BIN)
        .args([
            "generate",
            "--brokers",
            &brokers(),
            "--topic",
            &topic,
            "--partitions",
            "2",
            "--count",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());
    // Two partitions, all data in partition 0; with two workers, worker 1 reads only the empty one.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let generator =
        streampulse_ingest::Generator::new(3, streampulse_ingest::Scenario::Clean, START_MS, 100.0);
    let encoder = streampulse_ingest::Encoder::new();
    for i in 0..5_000 {
        let bytes = encoder.encode(&generator.event(i));
        loop {
            match producer.send(BaseRecord::to(&topic).key("k").payload(&bytes).partition(0)) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let schema = unique("idle");
    let mut child = start_with(&postgres_url(), &topic, &schema, "2", &["-w", "2"]);
    wait_caught_up(&schema, &topic, &mut child, Duration::from_secs(60));
    stop(child);
    let (records, _) = read_topic(&topic, decode_avro);
    assert_tables_match_oracle_counts(&schema, &records);
    pg().batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}

/// Writes `events` (partition, value) in order.
fn produce(topic: &str, events: &[(i32, Vec<u8>)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (partition, bytes) in events {
        let mut record = BaseRecord::to(topic)
            .key("k")
            .payload(bytes)
            .partition(*partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Creates an empty topic with `partitions` partitions.
fn create_topic(topic: &str, partitions: u32) {
    let status = Command::new(BIN)
        .args(["generate", "--brokers", &brokers(), "--topic", topic])
        .args(["--partitions", &partitions.to_string(), "--count", "0"])
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());
}

/// The stored watermark (ms), once the sink has written one.
fn stored_watermark(schema: &str, topic: &str) -> Option<i64> {
    pg().query_one(
        &format!(
            "SELECT (extract(epoch FROM min(watermark)) * 1000)::bigint FROM {schema}.sink_progress WHERE topic = $1"
        ),
        &[&topic],
    )
    .ok()
    .and_then(|r| r.get(0))
}

/// Idleness changes when results appear, never what they are (SPEC §4): a partition that falls
/// silent past the idle timeout, so that the others carry the watermark past its windows, and then
/// delivers its backlog in order, ends with the same tables as a run where it never went quiet.
#[test]
fn an_idle_partition_that_delivers_its_backlog_changes_nothing() {
    // One worker reading every partition, and one worker per partition (the idle worker must
    // follow the others' frontier, then be followed once it speaks again).
    for workers in ["1", "3"] {
        backlog_after_idleness(workers);
    }
}

fn backlog_after_idleness(workers: &str) {
    let topic = unique("backlog");
    create_topic(&topic, 3);
    let generator = streampulse_ingest::Generator::new(
        5,
        streampulse_ingest::Scenario::CdnOutage,
        START_MS,
        20.0,
    );
    let encoder = streampulse_ingest::Encoder::new();
    // Event i goes to partition i % 3; the generator's own disorder stays within each partition.
    let phase = |from: u64, to: u64, partitions: &[i32]| -> Vec<(i32, Vec<u8>)> {
        (from..to)
            .filter(|i| partitions.contains(&((i % 3) as i32)))
            .map(|i| ((i % 3) as i32, encoder.encode(&generator.event(i))))
            .collect()
    };
    // 20 events/s of event time: 2 400 events are 2 minutes.
    produce(&topic, &phase(0, 2_400, &[0, 1, 2]));

    let schema = unique("backlog");
    let mut child = start_with(&postgres_url(), &topic, &schema, "1", &["-w", workers]);
    wait_caught_up(&schema, &topic, &mut child, Duration::from_secs(60));
    // Partitions 1 and 2 move on by six minutes while partition 0 says nothing.
    produce(&topic, &phase(2_400, 9_600, &[1, 2]));
    wait_caught_up(&schema, &topic, &mut child, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_watermark(&schema, &topic).unwrap_or(0) < START_MS + 7 * 60_000 {
        assert!(
            Instant::now() < deadline,
            "partition 0 idle: the watermark moves on"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let final_before: i64 = pg()
        .query_one(
            &format!("SELECT count(*) FROM {schema}.window_totals WHERE is_final"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(final_before >= 6, "windows were reported final meanwhile");
    // Now partition 0 delivers its backlog, in order.
    produce(&topic, &phase(2_400, 9_600, &[0]));
    wait_caught_up(&schema, &topic, &mut child, Duration::from_secs(60));
    stop(child);

    let (records, _) = read_topic(&topic, decode_avro);
    assert_eq!(records.len(), 9_600);
    assert_tables_match_oracle(&schema, &records);
    let revised: i64 = pg()
        .query_one(
            &format!("SELECT count(*) FROM {schema}.window_totals WHERE revised_at IS NOT NULL"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        revised >= 5,
        "the final windows partition 0 caught up on are marked revised"
    );

    // The same topic read without any pause gives identical tables.
    let straight = unique("straight");
    let mut child = start(&topic, &straight, &[]);
    wait_caught_up(&straight, &topic, &mut child, Duration::from_secs(60));
    stop(child);
    let (a, b) = (snapshot(&schema), snapshot(&straight));
    for table in a.keys().filter(|t| *t != "sink_progress") {
        assert_eq!(a[table], b[table], "{table}");
    }
    let mut client = pg();
    for schema in [schema, straight] {
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .unwrap();
    }
}

/// A free loopback port for the API (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on the API at `port`, as JSON (`None` while it does not answer).
fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// Polls `/health` until `check` holds, for at most `timeout`; returns the last answer.
fn wait_health(
    port: u16,
    timeout: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let health = get_json(port, "/health");
        match health {
            Some(h) if check(&h) => return h,
            _ if Instant::now() >= deadline => {
                panic!("/health never satisfied the check: {health:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Every class of bad record a producer can write, with what its dead letter's reason must name.
fn poison() -> Vec<(&'static str, Option<Vec<u8>>)> {
    let encoder = streampulse_ingest::Encoder::new();
    let base =
        streampulse_ingest::Generator::new(9, streampulse_ingest::Scenario::Clean, START_MS, 100.0)
            .event(0);
    let bad = |change: &dyn Fn(&mut streampulse_ingest::Event)| {
        let mut e = base.clone();
        change(&mut e);
        Some(encoder.encode(&e))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // A bare datum written with another schema (v2's field layout), and two datums run together.
    let v2 = streampulse_ingest::confluent::ConfluentEncoder::new(
        1,
        streampulse_ingest::confluent::SchemaVersion::V2,
    )
    .encode(&base)[5..]
        .to_vec();
    vec![
        (
            "not a valid avro",
            Some(b"\xff\xfe garbage \x00\x01".to_vec()),
        ),
        ("not a valid avro", Some(v2)),
        ("left over", {
            let mut two = encoder.encode(&base);
            two.extend(encoder.encode(&base));
            Some(two)
        }),
        ("empty record value", Some(Vec::new())),
        ("empty record value", None), // a null value (tombstone)
        (
            "content.title",
            bad(&|e| e.content.title = "nul\0byte".into()),
        ),
        (
            "content.title",
            bad(&|e| e.content.title = "t".repeat(3_000)),
        ),
        (
            "user_context.region",
            bad(&|e| e.user_context.region = "EU\u{7}".into()),
        ),
        (
            "user_context.region",
            bad(&|e| e.user_context.region = String::new()),
        ),
        ("timestamp", bad(&|e| e.timestamp = 32_503_680_000_000)), // year 3000
        ("timestamp", bad(&|e| e.timestamp = -5)),
        (
            "ahead of its kafka record",
            bad(&|e| e.timestamp = now + 3_600_000),
        ),
        (
            "download.speed_mbps",
            bad(&|e| e.download.speed_mbps = 3.0e38),
        ),
        (
            "download.speed_mbps",
            bad(&|e| e.download.speed_mbps = f32::NAN),
        ),
        (
            "download.speed_mbps",
            bad(&|e| e.download.speed_mbps = -1.0),
        ),
        ("content.size_mb", bad(&|e| e.content.size_mb = -10)),
        (
            "download.duration_seconds",
            bad(&|e| e.download.duration_seconds = i32::MAX),
        ),
        ("content.price", bad(&|e| e.content.price = f32::INFINITY)),
        (
            "download.status",
            bad(&|e| e.download.status = "exploded".into()),
        ),
    ]
}

/// Nothing a producer can write halts, poisons or corrupts the pipeline: poison of every class,
/// spread over the partitions between good records, ends as dead letters with their reasons while
/// every good record is counted exactly as the recomputation says.
#[test]
fn poison_of_every_class_becomes_dead_letters() {
    let topic = unique("poison");
    create_topic(&topic, 3);
    let generator = streampulse_ingest::Generator::new(
        4,
        streampulse_ingest::Scenario::CdnOutage,
        START_MS,
        15.0,
    );
    let encoder = streampulse_ingest::Encoder::new();
    let poison = poison();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let send = |partition: i32, value: Option<&[u8]>| {
        let mut record = BaseRecord::<str, [u8]>::to(&topic)
            .key("k")
            .partition(partition);
        if let Some(value) = value {
            record = record.payload(value);
        }
        while let Err((_, back)) = producer.send(record) {
            record = back;
            producer.poll(Duration::from_millis(10));
        }
    };
    // Good events i → partition i % 3; after every 400 good events one poison record, in turn.
    let mut expected_dead = Vec::new();
    let mut next_offset = [0i64; 3];
    for i in 0..9_000u64 {
        let p = (i % 3) as usize;
        send(p as i32, Some(&encoder.encode(&generator.event(i))));
        next_offset[p] += 1;
        if i % 400 == 399 {
            let k = (i / 400) as usize % poison.len();
            let (reason, value) = &poison[k];
            send(p as i32, value.as_deref());
            expected_dead.push((p as i32, next_offset[p], *reason));
            next_offset[p] += 1;
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    assert!(
        expected_dead.len() >= poison.len(),
        "every class is written"
    );

    let schema = unique("poison");
    let mut child = start_with(&postgres_url(), &topic, &schema, NEVER_IDLE, &["-w", "2"]);
    wait_caught_up(&schema, &topic, &mut child, Duration::from_secs(90));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the pipeline is still running"
    );
    stop(child);

    let (mut records, mut bad) = read_topic(&topic, decode_avro);
    // The future-dated record decodes; only its Kafka timestamp (the time it was written) rules it
    // out. Every good event here is from 2023.
    let written = records.len();
    records.retain(|r| r.event.timestamp < START_MS + 24 * 3_600_000);
    bad += written - records.len();
    assert_eq!((records.len(), bad), (9_000, expected_dead.len()));
    assert_tables_match_oracle(&schema, &records);
    let mut client = pg();
    let dead = ms(
        &mut client,
        &format!("SELECT partition, kafka_offset, reason FROM {schema}.dead_letters ORDER BY partition, kafka_offset"),
    );
    let mut expected = expected_dead.clone();
    expected.sort();
    assert_eq!(
        dead.len(),
        expected.len(),
        "one dead letter per poison record"
    );
    for (row, (partition, offset, reason)) in dead.iter().zip(&expected) {
        let (p, o, text): (i32, i64, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!((p, o), (*partition, *offset));
        assert!(
            text.to_lowercase().contains(&reason.to_lowercase()),
            "offset {o}: {text:?} should name {reason:?}"
        );
    }
    // The newest window is the stream's own: no poisoned timestamp moved "now".
    let newest: i64 = client
        .query_one(
            &format!("SELECT (extract(epoch FROM max(window_start)) * 1000)::bigint FROM {schema}.window_totals"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(newest < START_MS + 4 * 3_600_000, "newest window {newest}");
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}

/// The sink never halts on data: a row PostgreSQL refuses (here, through a CHECK constraint an
/// analyst added, which validation cannot know about) becomes a dead letter with the database's
/// reason, and everything else commits with its offsets.
#[test]
fn a_row_the_database_refuses_is_set_aside() {
    let topic = unique("refused");
    generate(&topic, 6_000, "clean", &[]);
    let schema = unique("refused");
    let status = Command::new(BIN)
        .args([
            "migrate",
            "--postgres",
            &postgres_url(),
            "--pg-schema",
            &schema,
        ])
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());
    let (records, _) = read_topic(&topic, decode_avro);
    let refused_region = records[0].event.user_context.region.clone();
    pg().batch_execute(&format!(
        "ALTER TABLE {schema}.region_health ADD CONSTRAINT analysts_rule CHECK (region <> '{refused_region}')"
    ))
    .unwrap();

    let mut child = start(&topic, &schema, &[]);
    wait_caught_up(&schema, &topic, &mut child, Duration::from_secs(90));
    stop(child);

    let mut client = pg();
    let dead = ms(
        &mut client,
        &format!("SELECT kafka_offset, reason, convert_from(raw, 'UTF8') FROM {schema}.dead_letters WHERE partition = -1"),
    );
    assert!(!dead.is_empty(), "refused rows are dead letters");
    for row in &dead {
        let (reason, raw): (String, String) = (row.get(1), row.get(2));
        assert!(reason.contains("analysts_rule"), "{reason}");
        assert!(raw.contains(&refused_region), "{raw}");
    }
    // Everything but the refused region's rows is exactly the recomputation.
    let expected = recompute(&records, &Config::default());
    let stored = stored_stats(&schema);
    for (row, agg) in &expected.stats {
        match &row.key {
            Key::Region(r) if *r == refused_region => assert!(!stored.contains_key(row)),
            _ => assert_eq!(stored.get(row), Some(agg), "{row:?}"),
        }
    }
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}

/// A TCP relay to PostgreSQL that a test can cut: `Down` refuses new connections and severs the
/// open ones, `Silent` accepts connections and never answers (a peer that hangs). The database
/// behind it is the real one; only the network between is faulty.
struct Relay {
    port: u16,
    mode: Arc<Mutex<RelayMode>>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum RelayMode {
    Up,
    Down,
    Silent,
}

impl Relay {
    fn new() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let url: postgres::Config = postgres_url().parse().unwrap();
        let pg_port = url.get_ports().first().copied().unwrap_or(5432);
        let mode = Arc::new(Mutex::new(RelayMode::Up));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (m, g) = (mode.clone(), generation.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let current = *m.lock().unwrap();
                match current {
                    RelayMode::Down => drop(client),
                    RelayMode::Silent => {
                        // Hold it open, say nothing.
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_secs(600));
                            drop(client);
                        });
                    }
                    RelayMode::Up => {
                        let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", pg_port))
                        else {
                            continue;
                        };
                        let born = g.load(std::sync::atomic::Ordering::SeqCst);
                        for (mut from, mut to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            let g = g.clone();
                            std::thread::spawn(move || {
                                let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
                                let mut buf = [0u8; 16 * 1024];
                                loop {
                                    if g.load(std::sync::atomic::Ordering::SeqCst) != born {
                                        break; // cut
                                    }
                                    match from.read(&mut buf) {
                                        Ok(0) => break,
                                        Ok(n) => {
                                            if to.write_all(&buf[..n]).is_err() {
                                                break;
                                            }
                                        }
                                        Err(e)
                                            if matches!(
                                                e.kind(),
                                                std::io::ErrorKind::WouldBlock
                                                    | std::io::ErrorKind::TimedOut
                                            ) => {}
                                        Err(_) => break,
                                    }
                                }
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                }
            }
        });
        Relay {
            port,
            mode,
            generation,
        }
    }

    /// The PostgreSQL URL through the relay (with short timeouts, so tests need not wait long).
    fn url(&self) -> String {
        let url: postgres::Config = postgres_url().parse().unwrap();
        let user = url.get_user().unwrap_or("postgres");
        let db = url.get_dbname().unwrap_or("streampulse");
        format!(
            "postgres://{user}@127.0.0.1:{}/{db}?connect_timeout=2",
            self.port
        )
    }

    fn set(&self, mode: RelayMode) {
        *self.mode.lock().unwrap() = mode;
        if mode != RelayMode::Up {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

fn start_relayed(relay: &Relay, topic: &str, schema: &str, port: u16, extra: &[&str]) -> Child {
    let http = format!("127.0.0.1:{port}");
    let mut args = vec!["--http", &http];
    args.extend_from_slice(extra);
    start_with(&relay.url(), topic, schema, NEVER_IDLE, &args)
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PostgreSQL unreachable at start-up, then lost mid-run: the API serves and /health tells the
/// truth throughout; a connection that never answers is abandoned and retried; SIGTERM while the
/// database is away ends within the shutdown deadline, non-zero and losing nothing; SIGTERM with the
/// database back commits and exits 0; the tables then equal the recomputation.
#[test]
fn database_outages_are_reported_retried_and_bounded() {
    let topic = unique("outage");
    generate(&topic, 20_000, "cdn-outage", &[]);
    let relay = Relay::new();
    let schema = unique("outage");

    // Down at start-up: the API answers, /health says the database is unreachable.
    relay.set(RelayMode::Down);
    let port = free_port();
    let mut child = start_relayed(&relay, &topic, &schema, port, &["--shutdown-timeout", "3"]);
    let health = wait_health(port, Duration::from_secs(30), |h| {
        h["database"] == "unreachable"
    });
    assert_eq!(health["status"], "degraded");
    assert!(
        get_json(port, "/api/stats/realtime").is_some(),
        "the API serves meanwhile"
    );
    // A peer that accepts and never answers: the connect times out and is retried.
    relay.set(RelayMode::Silent);
    std::thread::sleep(Duration::from_secs(5));
    assert!(child.try_wait().unwrap().is_none());
    relay.set(RelayMode::Up);
    wait_caught_up(&schema, &topic, &mut child, Duration::from_secs(90));
    let health = wait_health(port, Duration::from_secs(20), |h| h["status"] == "healthy");
    assert_eq!(health["database"], "ok");

    // Lost mid-run, with more data to commit: reported, and SIGTERM ends in bounded time.
    relay.set(RelayMode::Down);
    let more = streampulse_ingest::Generator::new(
        7,
        streampulse_ingest::Scenario::CdnOutage,
        START_MS,
        100.0,
    );
    let encoder = streampulse_ingest::Encoder::new();
    let events: Vec<(i32, Vec<u8>)> = (20_000..30_000u64)
        .map(|i| ((i % 3) as i32, encoder.encode(&more.event(i))))
        .collect();
    produce(&topic, &events);
    wait_health(port, Duration::from_secs(30), |h| {
        h["database"] == "unreachable"
    });
    let asked = Instant::now();
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(25));
    assert!(
        !status.success(),
        "gave up on the last commit: a non-zero exit"
    );
    eprintln!(
        "SIGTERM during the outage: exited {status:?} after {:?}",
        asked.elapsed()
    );

    // A second signal cuts a long shutdown short: start with the database there, read slowly, cut
    // it while changes are pending, and signal twice.
    relay.set(RelayMode::Up);
    let port = free_port();
    let mut child = start_relayed(
        &relay,
        &topic,
        &schema,
        port,
        &["--shutdown-timeout", "600", "--max-rate", "1000"],
    );
    wait_health(port, Duration::from_secs(30), |h| h["database"] == "ok");
    std::thread::sleep(Duration::from_secs(1));
    relay.set(RelayMode::Down);
    wait_health(port, Duration::from_secs(30), |h| {
        h["database"] == "unreachable"
    });
    signal(&child, "TERM");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for the database"
    );
    signal(&child, "INT");
    let status = wait_exit(&mut child, Duration::from_secs(5));
    assert!(!status.success());

    // Down at start-up, nothing read yet: a signal ends it at once.
    let port = free_port();
    let mut child = start_relayed(&relay, &topic, &schema, port, &[]);
    wait_health(port, Duration::from_secs(30), |h| {
        h["database"] == "unreachable"
    });
    signal(&child, "TERM");
    wait_exit(&mut child, Duration::from_secs(5));

    // Back: it resumes from the stored offsets, catches up, and SIGTERM exits 0.
    relay.set(RelayMode::Up);
    let port = free_port();
    let mut child = start_relayed(&relay, &topic, &schema, port, &[]);
    wait_caught_up(&schema, &topic, &mut child, Duration::from_secs(90));
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let (records, _) = read_topic(&topic, decode_avro);
    assert_tables_match_oracle(&schema, &records);
    pg().batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}

/// Across processes an idle worker holds nothing back: all data is in partition 0, so the only
/// worker of process 1 reads an empty partition; after the idle timeout the watermark, which the
/// workers exchange through the dataflow, moves on and the windows become final.
#[test]
fn an_idle_process_does_not_hold_the_cluster_watermark() {
    let topic = unique("idlecluster");
    create_topic(&topic, 2);
    let generator =
        streampulse_ingest::Generator::new(6, streampulse_ingest::Scenario::Clean, START_MS, 10.0);
    let encoder = streampulse_ingest::Encoder::new();
    let events: Vec<(i32, Vec<u8>)> = (0..4_000u64)
        .map(|i| (0, encoder.encode(&generator.event(i))))
        .collect();
    produce(&topic, &events);

    let hosts = std::env::temp_dir().join(format!("{topic}.hosts"));
    std::fs::write(
        &hosts,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .unwrap();
    let hostfile = hosts.to_str().unwrap();
    let schema = unique("idlecluster");
    let cluster = |process: &str| {
        start_with(
            &postgres_url(),
            &topic,
            &schema,
            "2",
            &["-n", "2", "-p", process, "--hostfile", hostfile],
        )
    };
    let mut second = cluster("1");
    let mut first = cluster("0");
    wait_caught_up(&schema, &topic, &mut first, Duration::from_secs(90));
    // 4 000 events at 10/s span 400 s: every window but the newest becomes final.
    let last = generator.nominal_time(3_999);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let watermark = stored_watermark(&schema, &topic).unwrap_or(i64::MIN);
        if watermark >= last - 60_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watermark is held at {watermark} (want ≥ {})",
            last - 60_000
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let finals: i64 = pg()
        .query_one(
            &format!("SELECT count(*) FROM {schema}.window_totals WHERE is_final"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(finals >= 5, "{finals} final windows");
    assert!(second.try_wait().unwrap().is_none());
    stop(first);
    stop(second);
    let _ = std::fs::remove_file(&hosts);
    let (records, _) = read_topic(&topic, decode_avro);
    assert_tables_match_oracle_counts(&schema, &records);
    pg().batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}
