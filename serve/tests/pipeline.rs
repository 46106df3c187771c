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
        .args([
            "--postgres",
            url,
            "--pg-schema",
            schema,
            "--http",
            "127.0.0.1:0",
        ])
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
