//! The push benchmark: how long an event takes to reach a dashboard, by push (`GET /api/stream`)
//! and by polling (`GET /api/stats/realtime` every 2 s, as the page does without push), measured
//! in the same run on the same events.
//!
//! ```text
//!   producer (steady rate, event time = now) ─▶ fresh topic ─▶ `streampulse run --source kafka`
//!       │ sent at                                                   │
//!       │                     view (/metrics, every 2 ms) ◀─────────┤  the floor: event → view
//!       │                     push client (/api/stream?panels=realtime) ◀─┤  event → page by push
//!       │                     poll client (realtime, every --poll-ms) ◀───┘  event → page by polling
//! ```
//!
//! Event `i` has reached a client once the realtime panel it holds counts `i + 1` events
//! (`total_downloads + late_events`: every event is one download, on time or late), the method of
//! [`crate::kafka::latency`]. The run must fit in the panel's 5 minutes of windows (`seconds` ≤
//! 240). The first seconds (warm-up) are left out of the percentiles.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kafka::{
    config, err, percentiles, rand_suffix, send_paced, KafkaBench, LatencyMeasurement, Run, Seen,
};

/// What to measure.
#[derive(Clone, Debug)]
pub struct PushBench {
    /// Brokers, partitions, seed, the binary and extra `run` flags (`topic` is a prefix).
    pub kafka: KafkaBench,
    /// Offered events/s, and for how long.
    pub rate: f64,
    pub seconds: f64,
    /// The polling client's interval (the dashboard's is 2 s).
    pub poll: Duration,
}

/// Offers the load and returns the latencies to the view, to the push client and to the polling
/// client, in that order.
pub fn push_latency(
    bench: &PushBench,
    log: &dyn Fn(String),
) -> Result<Vec<LatencyMeasurement>, String> {
    if !(bench.rate * bench.seconds >= 1.0 && bench.seconds <= 240.0) {
        return Err("push latency needs at least one event and at most 240 s".into());
    }
    let mut kafka = bench.kafka.clone();
    kafka.topic = format!("{}-push-{}", bench.kafka.topic, rand_suffix());
    let client = config(&kafka);
    client.create_topic(kafka.partitions).map_err(err)?;
    let run = Run::start(&kafka, 1, None)?;
    let api = run.api.ok_or("the pipeline serves no API")?;
    // Let the pipeline connect and settle before offering load.
    std::thread::sleep(Duration::from_secs(3));
    let total = (bench.rate * bench.seconds) as u64;
    log(format!(
        "offering {} events/s for {} s ({total} events) to {}; push client and a client polling every {} ms",
        bench.rate,
        bench.seconds,
        kafka.topic,
        bench.poll.as_millis()
    ));
    let epoch = Instant::now();
    let ms = move || epoch.elapsed().as_secs_f64() * 1000.0;
    let done = AtomicBool::new(false);
    let (sent, view, pushed, polled) = std::thread::scope(|scope| {
        let view = scope.spawn(|| {
            let mut seen: Seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let count = run.metric("streampulse_view_events_total") as u64;
                seen.push((ms(), count));
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        });
        let pushed = scope.spawn(|| push_client(api, &done, &ms));
        let polled = scope.spawn(|| {
            let mut seen: Seen = Vec::new();
            let mut next = ms();
            while !done.load(Ordering::Relaxed) {
                if let Some(count) = realtime(api) {
                    seen.push((ms(), count));
                }
                next += bench.poll.as_secs_f64() * 1000.0;
                while ms() < next && !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            seen
        });
        let sent = send_paced(&client, kafka.seed, bench.rate, total, &ms)?;
        // Until the view has everything, then one polling interval more for the polling client.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline
            && (run.metric("streampulse_view_events_total") as u64) < total
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(bench.poll + Duration::from_millis(500));
        done.store(true, Ordering::Relaxed);
        let join = |e| format!("a client panicked: {e:?}");
        let view = view.join().map_err(join)?;
        let pushed = pushed.join().map_err(join)??;
        let polled = polled.join().map_err(join)?;
        Ok::<_, String>((sent, view, pushed, polled))
    })?;
    drop(run);
    let poll_name = format!("event_to_poll_{}ms", bench.poll.as_millis());
    [
        ("event_to_view", &view),
        ("event_to_push", &pushed),
        (poll_name.as_str(), &polled),
    ]
    .into_iter()
    .map(|(name, seen)| percentiles(name, 1, bench.rate, bench.seconds, &sent, seen))
    .collect()
}

/// The events the realtime panel counts, from its polling endpoint.
fn realtime(api: SocketAddr) -> Option<u64> {
    let mut stream = TcpStream::connect(api).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request =
        "GET /api/stats/realtime?minutes=5 HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let (_, body) = reply.split_once("\r\n\r\n")?;
    counted(body)
}

fn counted(realtime: &str) -> Option<u64> {
    let body: Value = serde_json::from_str(realtime).ok()?;
    Some(body["total_downloads"].as_u64()? + body["late_events"].as_u64().unwrap_or(0))
}

/// Reads `/api/stream?panels=realtime` until `done`: when each realtime event arrived, and its
/// count. The body is chunked; each chunk is taken as it comes and events are cut at blank lines.
fn push_client(api: SocketAddr, done: &AtomicBool, ms: &dyn Fn() -> f64) -> Result<Seen, String> {
    let mut stream = TcpStream::connect(api).map_err(err)?;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(err)?;
    let request = "GET /api/stream?panels=realtime HTTP/1.1\r\nHost: bench\r\n\r\n";
    stream.write_all(request.as_bytes()).map_err(err)?;
    let mut raw: Vec<u8> = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    let mut head_done = false;
    let mut seen: Seen = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    while !done.load(Ordering::Relaxed) {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err("the server closed the push stream".into()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("reading the push stream: {e}")),
        };
        let at = ms();
        raw.extend_from_slice(&buf[..n]);
        if !head_done {
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            if !head.starts_with("HTTP/1.1 200") {
                return Err(format!("the push stream was refused: {head}"));
            }
            raw.drain(..end + 4);
            head_done = true;
        }
        // De-chunk what is complete.
        while let Some(line) = raw.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&raw[..line]).map_err(err)?;
            let size = usize::from_str_radix(size.trim(), 16).map_err(err)?;
            if raw.len() < line + 2 + size + 2 {
                break;
            }
            body.extend_from_slice(&raw[line + 2..line + 2 + size]);
            raw.drain(..line + 2 + size + 2);
        }
        while let Some(end) = body.windows(2).position(|w| w == b"\n\n") {
            let event = String::from_utf8_lossy(&body[..end]).to_string();
            body.drain(..end + 2);
            if let Some(count) = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .and_then(counted)
            {
                seen.push((at, count));
            }
        }
    }
    Ok(seen)
}
