//! The push stream (`GET /api/stream`, server-sent events) of the real binary, read over a plain
//! `TcpStream` by a small SSE client ([`Sse`]):
//!
//! - resume, against a view that stands still (`run --source kafka` on a topic written once, so
//!   every body is deterministic): a fresh stream sends every panel, each event's data equal to
//!   what the polling endpoint returns; resuming at the last id sends nothing while nothing
//!   changes; after more records, resuming at the old id sends exactly the panels whose polling
//!   answer changed, and nothing else; an id of another boot, or a malformed one (header or
//!   `?last_event_id=`), sends every panel; the metrics count fresh, resumed and resynced streams;
//! - bad parameters are 400 with the API's error shape; the stream cap answers 503 beyond it;
//! - a flood of 200 streams that never read (receive buffers of 4 KiB) under live traffic: the
//!   server drops them as slow (`streampulse_push_dropped_slow_total`), its resident memory grows
//!   by less than [`FLOOD_RSS_BOUND_KIB`], and a client that reads keeps getting frames throughout,
//!   for far longer than the request timeout (2 s here), which a stream is not subject to.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{brokers, generate, http_get, unique, Pipeline};

/// The dashboard's panels and the polling request each one mirrors (serve/web/src/api.ts).
const PANELS: [(&str, &str); 7] = [
    ("realtime", "/api/stats/realtime?minutes=5"),
    ("alerts", "/api/stats/alerts?limit=10"),
    ("trending", "/api/stats/trending?minutes=5&limit=10"),
    ("regions", "/api/stats/regions?minutes=5"),
    ("timeseries", "/api/stats/timeseries?minutes=60"),
    ("devices", "/api/stats/devices?minutes=5&limit=10"),
    ("rising", "/api/stats/trending?by=rising&limit=10"),
];

/// How much the server's resident memory may grow while 200 streams stall: each holds at most
/// about four frames (one in the stream's channel, one its task is trying to send, hyper's
/// 16 KiB write buffer) of about 10 KiB here, so 200 × 64 KiB = 12.5 MiB, plus the tasks and
/// sockets' own state; 32 MiB leaves room for the allocator. A per-client queue of deltas would
/// grow by the frame rate (about 40 KiB/s per client here) for as long as the clients stall.
const FLOOD_RSS_BOUND_KIB: u64 = 32 * 1024;

// ---------------------------------------------------------------------------------------------
// A small server-sent-events client
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: String,
    name: String,
    data: String,
}

/// One open stream: the response head is read, the chunked body is decoded as it arrives.
struct Sse {
    conn: TcpStream,
    /// Bytes read and not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body not yet parsed into events.
    body: Vec<u8>,
    retry: Option<u64>,
}

/// `GET path` with `headers`: the open stream, or the status and body of a refusal.
fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Sse, (u16, Value)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut buf = [0; 4096];
        let n = conn.read(&mut buf).expect("the response head");
        assert!(n > 0, "closed before the response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(raw[..end].to_vec())
        .unwrap()
        .to_ascii_lowercase();
    let rest = raw[end + 4..].to_vec();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    if status != 200 {
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("an error has a Content-Length");
        let mut body = rest;
        while body.len() < length {
            let mut buf = [0; 4096];
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0);
            body.extend_from_slice(&buf[..n]);
        }
        assert!(head.contains("content-type: application/json"), "{head}");
        return Err((status, serde_json::from_slice(&body).unwrap()));
    }
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    Ok(Sse {
        conn,
        raw: rest,
        body: Vec::new(),
        retry: None,
    })
}

fn open_ok(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
    open(addr, path, headers).unwrap_or_else(|(status, body)| panic!("{path}: {status} {body}"))
}

impl Sse {
    /// Moves complete chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        loop {
            let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.raw[..line]).unwrap();
            let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("a chunk size, got {size:?}"));
            assert!(size > 0, "the stream ended");
            if self.raw.len() < line + 2 + size + 2 {
                return;
            }
            let data = self.raw[line + 2..line + 2 + size].to_vec();
            self.body.extend_from_slice(&data);
            self.raw.drain(..line + 2 + size + 2);
        }
    }

    /// The next event within `within`, or `None`. Comments and the retry hint are not events.
    fn next(&mut self, within: Duration) -> Option<Event> {
        let deadline = Instant::now() + within;
        loop {
            self.dechunk();
            if let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.body[..end].to_vec()).unwrap();
                self.body.drain(..end + 2);
                let mut event = Event {
                    id: String::new(),
                    name: String::new(),
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("retry: ") {
                        self.retry = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        event.id = v.to_string();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.name = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        assert!(event.data.is_empty(), "one data line per event: {block}");
                        event.data = v.to_string();
                    } else {
                        assert!(line.starts_with(':'), "unexpected line {line:?}");
                    }
                }
                if !event.name.is_empty() {
                    assert!(!event.id.is_empty(), "an event without an id: {block}");
                    return Some(event);
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.conn.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0; 16384];
            match self.conn.read(&mut buf) {
                Ok(0) => panic!("the server closed the stream"),
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("reading the stream: {e}"),
            }
        }
    }

    /// Every event of the next `span`.
    fn collect(&mut self, span: Duration) -> Vec<Event> {
        let deadline = Instant::now() + span;
        std::iter::from_fn(|| self.next(deadline.saturating_duration_since(Instant::now())))
            .collect()
    }

    /// Events until none arrives for `quiet`.
    fn drain(&mut self, quiet: Duration) -> Vec<Event> {
        std::iter::from_fn(|| self.next(quiet)).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn get(addr: SocketAddr, path: &str) -> String {
    let (status, body) = http_get(addr, path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Every panel's polling answer, by panel name.
fn polled(addr: SocketAddr) -> BTreeMap<&'static str, String> {
    PANELS
        .iter()
        .map(|(name, path)| (*name, get(addr, path)))
        .collect()
}

/// The server's answers once two reads 600 ms apart agree (the records are all consumed).
fn settled(addr: SocketAddr, events: i64) -> BTreeMap<&'static str, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = BTreeMap::new();
    loop {
        let health: Value = serde_json::from_str(&get(addr, "/health")).unwrap();
        let counted = health["events"].as_i64().unwrap();
        let now = polled(addr);
        if counted >= events && now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {counted} of {events} events"
        );
        last = now;
        std::thread::sleep(Duration::from_millis(600));
    }
}

/// One counter or gauge of `/metrics`, with its labels, e.g. `x_total{start="fresh"}`.
fn metric(addr: SocketAddr, series: &str) -> f64 {
    let text = get(addr, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        .parse()
        .unwrap()
}

/// The last event of each panel.
fn by_panel(events: &[Event]) -> BTreeMap<String, String> {
    events
        .iter()
        .map(|e| (e.name.clone(), e.data.clone()))
        .collect()
}

/// `streampulse run` reading `topic` from its start, with a view that stands still once it is
/// read (no partition is ever judged idle), the API on a free port.
fn kafka_server(topic: &str, extra: &[&str]) -> Pipeline {
    let args: Vec<String> = [
        "run",
        "--source",
        "kafka",
        "--brokers",
        &brokers(),
        "--topic",
        topic,
        "--http",
        "127.0.0.1:0",
        "--idle-timeout",
        "3600",
        "--status-interval",
        "3600",
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .map(String::from)
    .collect();
    Pipeline::spawn(topic, &args, true)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn resume_sends_only_what_changed_and_an_unknown_id_resyncs() {
    let topic = unique("push_resume");
    generate(&topic, 3000, "cdn-outage", &[]);
    let server = kafka_server(&topic, &[]);
    let addr = server.api();
    let before = settled(addr, 3000);

    // A fresh stream: every panel, each the polling endpoint's body.
    let mut fresh = open_ok(addr, "/api/stream", &[]);
    let events = fresh.drain(Duration::from_millis(1500));
    assert_eq!(fresh.retry, Some(2000), "the retry hint");
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.len(), PANELS.len(), "one event per panel: {names:?}");
    assert_eq!(
        by_panel(&events),
        before
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        "the pushed data is the polled data"
    );
    let (boot, _) = events[0].id.split_once('-').expect("id = boot-sequence");
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| {
            let (b, s) = e.id.split_once('-').unwrap();
            assert_eq!(b, boot, "one boot");
            s.parse().unwrap()
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "ids increase: {seqs:?}"
    );
    let last = events.last().unwrap().id.clone();
    drop(fresh);

    // Resuming at the newest id while nothing changes: nothing to send.
    let mut idle = open_ok(addr, "/api/stream", &[("Last-Event-ID", &last)]);
    assert_eq!(idle.next(Duration::from_millis(1500)), None);
    drop(idle);

    // More records: the same events again, so the on-time ones double and the late ones count as
    // late. Resuming at the old id sends exactly the panels whose answer changed.
    generate(&topic, 3000, "cdn-outage", &[]);
    let after = settled(addr, 6000);
    let changed: Vec<&str> = PANELS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| before[name] != after[name])
        .collect();
    eprintln!("panels changed by the second batch: {changed:?}");
    assert!(!changed.is_empty(), "the new records changed nothing");
    // (The alerts stay: the doubled traffic keeps every rate, and so every alert, as it was.)
    assert!(
        changed.len() < PANELS.len(),
        "every panel changed, so resuming could not be told from a resync"
    );
    let mut resumed = open_ok(addr, "/api/stream", &[("Last-Event-ID", &last)]);
    let events = resumed.drain(Duration::from_millis(1500));
    let mut names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    names.sort_by_key(|n| PANELS.iter().position(|(p, _)| p == n));
    assert_eq!(names, changed, "only the changed panels, once each");
    for event in &events {
        assert_eq!(event.data, after[event.name.as_str()], "{}", event.name);
        let seq: u64 = event.id.split_once('-').unwrap().1.parse().unwrap();
        assert!(seq > seqs[5], "a new id after the old one");
    }
    let newest = events.last().unwrap().id.clone();
    drop(resumed);

    // Another boot, or a malformed id, in the header or the query: every panel (never an error).
    let other_boot = format!("{:016x}-3", u64::from_str_radix(boot, 16).unwrap() ^ 1);
    let encoded = other_boot.replace('-', "%2D");
    let resyncs: [(String, Vec<(&str, &str)>); 4] = [
        ("/api/stream".into(), vec![("Last-Event-ID", &other_boot)]),
        ("/api/stream".into(), vec![("Last-Event-ID", "not-an-id")]),
        (format!("/api/stream?last_event_id={encoded}"), vec![]),
        ("/api/stream?last_event_id=%20garbage".into(), vec![]),
    ];
    for (path, headers) in &resyncs {
        let mut stream = open_ok(addr, path, headers);
        let events = stream.drain(Duration::from_millis(1200));
        assert_eq!(
            events.len(),
            PANELS.len(),
            "{path} {headers:?}: every panel"
        );
        assert_eq!(
            by_panel(&events),
            after
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            "{path} {headers:?}"
        );
    }
    // The query names the id for clients that cannot set the header.
    let mut by_query = open_ok(addr, &format!("/api/stream?last_event_id={newest}"), &[]);
    assert_eq!(by_query.next(Duration::from_millis(1200)), None);
    // A subset of the panels.
    let mut some = open_ok(addr, "/api/stream?panels=alerts,realtime", &[]);
    let mut names: Vec<String> = some
        .drain(Duration::from_millis(1200))
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["alerts", "realtime"]);

    assert_eq!(
        metric(
            addr,
            "streampulse_push_streams_opened_total{start=\"fresh\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            addr,
            "streampulse_push_streams_opened_total{start=\"resume\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            addr,
            "streampulse_push_streams_opened_total{start=\"resync\"}"
        ),
        4.0
    );
}

#[test]
fn bad_parameters_are_400_and_the_cap_is_503() {
    let topic = unique("push_cap");
    generate(&topic, 200, "clean", &[]);
    let server = kafka_server(&topic, &["--push-max-streams", "2"]);
    let addr = server.api();
    for bad in ["panels=nope", "panels=,", "last_event_id=%zz"] {
        let (status, body) = open(addr, &format!("/api/stream?{bad}"), &[])
            .err()
            .unwrap_or_else(|| panic!("{bad} was accepted"));
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"], "bad_parameter", "{bad}: {body}");
        assert!(body["detail"].is_string());
    }
    let first = open_ok(addr, "/api/stream", &[]);
    let _second = open_ok(addr, "/api/stream", &[]);
    let (status, body) = open(addr, "/api/stream", &[])
        .err()
        .expect("a third is refused");
    assert_eq!(status, 503);
    assert_eq!(body["error"], "too_many_streams");
    assert_eq!(metric(addr, "streampulse_push_streams"), 2.0);
    // A closed stream frees its place.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(addr, "streampulse_push_streams") > 1.0 {
        assert!(
            Instant::now() < deadline,
            "the closed stream is still counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _third = open_ok(addr, "/api/stream", &[]);
    assert_eq!(metric(addr, "streampulse_push_streams_refused_total"), 1.0);

    let off = kafka_server(&topic, &["--push-max-streams", "0"]);
    let (status, body) = open(off.api(), "/api/stream", &[])
        .err()
        .expect("push is off");
    assert_eq!(status, 503);
    assert_eq!(body["error"], "push_disabled");
    // Polling is unaffected.
    get(off.api(), "/api/stats/realtime?minutes=5");
}

#[test]
fn slow_streams_are_dropped_without_growing_memory() {
    const SLOW: usize = 200;
    // A request timeout of 2 s, which streams read for longer must outlive.
    let args: Vec<String> = ["run", "--http", "127.0.0.1:0", "--rate", "400"]
        .into_iter()
        .chain(["--scenario", "cdn-outage", "--status-interval", "3600"])
        .chain(["--http-request-timeout", "2"])
        .map(String::from)
        .collect();
    let server = Pipeline::spawn("streampulse run (flood)", &args, true);
    let addr = server.api();
    // Warm up: a stream and a minute of windows, so frames have their usual size.
    let mut reader = open_ok(addr, "/api/stream", &[]);
    assert!(reader.collect(Duration::from_secs(3)).len() >= 6);
    let rss_before = server.rss_kib();

    // 200 streams whose clients never read, with 4 KiB receive buffers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let slow: Vec<tokio::net::TcpStream> = runtime.block_on(async {
        let mut streams = Vec::new();
        for _ in 0..SLOW {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let mut stream = socket.connect(addr).await.unwrap();
            let head = format!("GET /api/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
                .await
                .unwrap();
            streams.push(stream);
        }
        streams
    });

    // The reader keeps reading; the slow ones are dropped; memory is sampled throughout.
    let started = Instant::now();
    let mut peak = rss_before;
    let mut read = 0;
    let mut dropped = 0.0;
    while started.elapsed() < Duration::from_secs(60) {
        let events = reader.collect(Duration::from_millis(400));
        read += events.len();
        peak = peak.max(server.rss_kib());
        dropped = metric(addr, "streampulse_push_dropped_slow_total");
        if dropped >= SLOW as f64 {
            break;
        }
    }
    let took = started.elapsed();
    assert_eq!(
        dropped,
        SLOW as f64,
        "slow streams dropped after {took:?}\n{}",
        server.log_tail(20)
    );
    assert!(
        read as f64 >= took.as_secs_f64() * 2.0,
        "the reading client got {read} events in {took:?}"
    );
    let growth = peak.saturating_sub(rss_before);
    eprintln!(
        "{SLOW} slow streams dropped within {took:?}; RSS {rss_before} KiB before, peak {peak} KiB (+{growth} KiB); the reader got {read} events"
    );
    assert!(
        growth < FLOOD_RSS_BOUND_KIB,
        "RSS grew by {growth} KiB (bound {FLOOD_RSS_BOUND_KIB} KiB)"
    );
    // The reader is still being served, and was never dropped.
    assert!(reader.next(Duration::from_secs(2)).is_some());
    assert_eq!(metric(addr, "streampulse_push_streams"), 1.0);
    assert_eq!(
        metric(
            addr,
            "streampulse_http_connections_closed_total{reason=\"request_timeout\"}"
        ),
        0.0,
        "a stream being read outlives the request timeout"
    );
    drop(slow);
}
